"""What every stage shares: settings, the plan and its calendar, errors, names, the
clock, output for people and programs, files, package resources and stopping."""
