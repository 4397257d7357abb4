//! The policyserve operator: reconciles PolicyServices into per-node OptimizationProfiles.
