//! Alerts: how caretaker tells a human that something needs attention.

pub mod email;
