//! The inference engine (placeholder).
