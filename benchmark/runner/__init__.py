"""The runner: a composed config to the rows of a sweep (config -> plan -> execute -> stages -> checks -> rows)."""
