//! Calendar periods for budgets.
