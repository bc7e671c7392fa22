"""The two L-inf budgets the tests of the plan (test_plan.py) and of the planner (test_planner.py) share."""

from __future__ import annotations

EIGHT, SIXTEEN = 8 / 255, 16 / 255
