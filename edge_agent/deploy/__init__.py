"""The parts of the agent's deployer (`edge_agent.deployer.Deployer` runs them on its thread).

- `state`: the last outcome per deployment and its shadow, kept in `deploy.json` (a pydantic
  model; files written by earlier agents load as they are).
- `reports`: each step reported on the `report` topic and recorded in that state.
- `target`: what a verified model is for: the deployment's model or its shadow.
- `transfers`: the one transfer in progress, and what it is for.
- `install`: verify and install model bytes (received, or already held for another version),
  and activate the deployment's model (on probation when it asks for one).
- `shadow`: the deployment's shadow, run only beside that deployment's active model.
"""
