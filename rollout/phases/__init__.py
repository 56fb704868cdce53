"""The plan's steps on the registry: previews first, then enforcement of a phase, brown-
outs and ELV, org enforcement, approvals of deployed runs, and the timeline of them all."""
