"""The care-plan model: aggregates, status machines, rules, events and errors. Standard library only."""
