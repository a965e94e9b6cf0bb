"""Running: the plan of typed jobs, the recipe that runs one job, executors, run folders and results."""
