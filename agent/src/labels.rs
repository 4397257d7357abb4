//! Capability labels. PLACEHOLDER: replaced by the detection issue's implementation.
