//! Processes of the agent and of its jobs: the raw OS calls they need.

pub mod sys;
