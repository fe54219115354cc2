"""The task registry: the only functions a Lanes worker will run.

A task is a plain function of one argument, its validated parameters model:

    class ResizeParams(BaseModel):
        url: HttpUrl
        width: int = Field(gt=0, le=4096)

    @task("images.resize", params=ResizeParams, priority=Priority.LOW, timeout_s=120, max_retries=5)
    def resize(params: ResizeParams) -> dict:
        progress(50, "downloaded")
        ...

The RQ job's function name is the task name. Workers resolve it here and nowhere else, so a job
hash in Redis that names `os.system` meets "task not found", never an import.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import to_jsonable_python
from rq import Retry

from backend.enums import Priority
from backend.errors import InvalidInput, UnknownTask

BUILTIN_TASK_MODULES = ("backend.tasks.demo",)
DEFAULT_TIMEOUT_S = 600

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Task:
    """A registered function with its parameters model and its defaults."""

    name: str
    fn: Callable[[Any], Any]
    params_model: type[BaseModel]
    priority: Priority
    timeout_s: int
    max_retries: int | None
    description: str

    def validate(self, params: Any) -> dict[str, Any]:
        """Params as JSON values after the model has checked them; raises InvalidInput."""
        try:
            model = self.params_model.model_validate(params)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            raise InvalidInput(
                {"task": self.name, "errors": to_jsonable_python(errors)}, code="invalid_params"
            ) from None
        return model.model_dump(mode="json")

    def __call__(self, **params: Any) -> Any:
        """Run the task as a worker does: validate, call, return JSON values."""
        model = self.params_model.model_validate(params)
        result = self.fn(model)
        if isinstance(result, Retry):  # the task asks RQ to run it again later
            return result
        return to_jsonable_python(result)

    def params_schema(self) -> dict[str, Any]:
        """The parameters' JSON Schema, a copy of the caller's own."""
        return copy.deepcopy(self._params_schema)

    @cached_property
    def _params_schema(self) -> dict[str, Any]:
        # Made once: pydantic builds a schema in about 0.2 ms a task, and `GET /api/v1/tasks`
        # lists every task's.
        return self.params_model.model_json_schema()


class TaskRegistry:
    """Task name -> Task. One per process; tests may build their own."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}

    def task(
        self,
        name: str,
        *,
        params: type[BaseModel],
        priority: Priority = Priority.NORMAL,
        timeout_s: int = DEFAULT_TIMEOUT_S,
        max_retries: int | None = None,
        description: str | None = None,
    ) -> Callable[[F], F]:
        """Register the decorated function as task `name`."""

        def register(fn: F) -> F:
            if name in self._tasks and self._tasks[name].fn is not fn:
                raise ValueError(f"task {name!r} is already registered")
            doc = (fn.__doc__ or "").strip().splitlines()
            self._tasks[name] = Task(
                name=name,
                fn=fn,
                params_model=params,
                priority=Priority(priority),
                timeout_s=timeout_s,
                max_retries=max_retries,
                description=description or (doc[0] if doc else ""),
            )
            return fn

        return register

    def get(self, name: str | None) -> Task:
        """The task called `name`; raises UnknownTask."""
        if name is None or name not in self._tasks:
            raise UnknownTask(f"unknown task: {name!r}", code="unknown_task")
        return self._tasks[name]

    def all(self) -> list[Task]:
        return sorted(self._tasks.values(), key=lambda t: t.name)

    def load_modules(self, names: Iterable[str] = ()) -> None:
        """Import the built-in task modules and `names`; importing a module registers its tasks."""
        for module in (*BUILTIN_TASK_MODULES, *names):
            importlib.import_module(module)


#: The process-wide registry that `@task` fills.
registry = TaskRegistry()
task = registry.task

from backend.tasks.reporting import progress  # noqa: E402  (re-exported for task authors)

__all__ = ["Task", "TaskRegistry", "progress", "registry", "task"]
