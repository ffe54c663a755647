"""Tasks for the ``worker`` agent type: what travels on a worker's queue, the callables that
serve it, and what happens to one delivery (docs/agents.md, "worker").

Nothing here touches the broker: the VSM side is vsmd/vsm/task_queue.py, the submitting side
vsmd/bus/tasks.py, and the agent that joins them vsmd/agents/worker.py.
"""
