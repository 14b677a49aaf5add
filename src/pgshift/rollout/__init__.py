"""The rollout engine: the whole blue-green cutover as a journaled, resumable state machine.

``config`` (the cutover file), ``journal`` (state, lease, commands, approvals), ``steps``,
``analysis``, ``watch``, ``switch`` (flip and rollback), ``engine`` (the phase loop and
resume), ``verbs`` (operator verbs, status, plan). See docs/rollout.md.
"""
