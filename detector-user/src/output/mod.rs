//! The output stage: diagnoses as JSON lines, Prometheus metrics (with the endpoints that
//! fail most), the endpoint serving them with the agent's health.

pub mod community_id;
pub mod detail;
pub mod diagnosis;
pub mod escape;
pub mod health;
pub mod http;
pub mod metrics;
pub mod occupancy;
pub mod top;
pub mod web_config;
