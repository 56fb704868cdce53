"""Tools for operators: `rollout doctor`, the checks of a deployment's parts."""
