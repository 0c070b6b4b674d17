"""The execution aggregate: its state and fold, admission, commands, attempt outcomes, sub-workflows."""
