"""Projects and their models."""

from __future__ import annotations

from fastapi import APIRouter, status

from cloud_hub.api.auth import OPERATOR, VIEWER
from cloud_hub.api.deps import RegistryDep
from cloud_hub.registry.schemas import Model, ModelCreate, Project, ProjectCreate

router = APIRouter(tags=["projects"])


@router.get("/projects", dependencies=[VIEWER])
def list_projects(registry: RegistryDep) -> list[Project]:
    return registry.list_projects()


@router.post("/projects", status_code=status.HTTP_201_CREATED, dependencies=[OPERATOR])
def create_project(body: ProjectCreate, registry: RegistryDep) -> Project:
    return registry.create_project(body.name, body.description)


@router.get("/projects/{project}", dependencies=[VIEWER])
def get_project(project: str, registry: RegistryDep) -> Project:
    """A project by id or by name."""
    return registry.get_project(project)


@router.get("/projects/{project}/models", dependencies=[VIEWER])
def list_models(project: str, registry: RegistryDep) -> list[Model]:
    return registry.list_models(project)


@router.post(
    "/projects/{project}/models", status_code=status.HTTP_201_CREATED, dependencies=[OPERATOR]
)
def create_model(project: str, body: ModelCreate, registry: RegistryDep) -> Model:
    return registry.create_model(project, body.name, task=body.task, description=body.description)


@router.get("/projects/{project}/models/{model}", dependencies=[VIEWER])
def get_model(project: str, model: str, registry: RegistryDep) -> Model:
    """A model by id or by name within its project."""
    return registry.get_model(project, model)


@router.get("/models", dependencies=[VIEWER])
def list_all_models(registry: RegistryDep) -> list[Model]:
    return registry.list_models()


@router.get("/models/{model_id}", dependencies=[VIEWER])
def get_model_by_id(model_id: int, registry: RegistryDep) -> Model:
    return registry.get_model_by_id(model_id)
