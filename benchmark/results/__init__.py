"""The results of a sweep: results.csv, the statistics and verdicts of the claims, the leaderboard and figures."""
