"""The code environment: problems graded by running their unit tests in a sandbox.

Everything here runs on the host; the rollout reaches the grader through
`flexmg.rollout.host_reward`. See `sandbox.py` for what is and is not isolated.
"""
