//! RawPlan -> Plan.
/// One problem found in a plan file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanIssue;
/// Every problem found in one plan file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanIssues;
