"""Preference trainers on trl (DPO, HyPO, T-REG) and CoACT."""
