//! The tuner (placeholder).
