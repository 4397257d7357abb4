//! The policyserve agent: detects its node's hardware, tunes and serves ONNX models.
