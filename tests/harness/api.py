"""The tests' Kubernetes client: a thin dict-in, dict-out adapter over lightkube (`Api`), and small helpers over the
dicts it returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx2
from lightkube import ALL_NS, Client, KubeConfig, LoadResourceError
from lightkube.config.client_adapter import verify_cluster
from lightkube.config.models import Cluster, User
from lightkube.core.resource import ApiInfo, NamespacedResource, api_info
from lightkube.core.resource_registry import resource_registry
from lightkube.generic_resource import Generic, GenericGlobalResource, GenericNamespacedResource, create_api_info
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.types import CascadeType

T = TypeVar("T")

FIELD_MANAGER = "ml-platform-engine-test"


class ApiError(RuntimeError):
    """The API server refused a request: `status` is the HTTP status, `body` the decoded answer (a Status object
    as a dict, or text)."""

    def __init__(self, status: int, body: Any, what: str) -> None:
        self.status = status
        self.body = body
        message = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{what}: HTTP {status}: {message}")


class StrictWrites(httpx2.HTTPTransport):
    """Every create, update and apply asks for strict field validation, so unknown or duplicate fields are errors
    (the API server only warns by default); lightkube's create and apply have no parameter for it, its Client
    takes a transport."""

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.method in ("POST", "PUT", "PATCH"):
            request.url = request.url.copy_merge_params({"fieldValidation": "Strict"})
        return super().handle_request(request)


Resource = type[GenericNamespacedResource] | type[GenericGlobalResource]


class Api:
    """What the tests need of the Kubernetes API, on lightkube, with plain dicts in and out: server-side apply
    and create (strict field validation), get, list, delete, events, pod logs and the API server's readiness.

    Objects go through lightkube's generic (dict) resources, never its typed models, so what a test sends is what
    the API server sees (an unknown field must reach it to be refused) and what it gets back is the server's JSON.
    Kinds are found in lightkube's built-in resources or, for custom resources, in the cluster's CRDs."""

    def __init__(self, server: str, ca: Path, crt: Path, key: Path) -> None:
        self.server = server
        config = KubeConfig.from_one(
            cluster=Cluster(server=server, certificate_auth=str(ca)),
            user=User(client_cert=str(crt), client_key=str(key)),
        )
        single = config.get()
        assert single is not None and single.user is not None  # from_one made both
        # A Client given a transport leaves TLS to it: the CA and client certificate of `config`, as lightkube
        # reads them.
        tls = verify_cluster(single.cluster, single.user, single.abs_file)
        self.client = Client(
            config, timeout=httpx2.Timeout(30.0), field_manager=FIELD_MANAGER, transport=StrictWrites(verify=tls)
        )
        self._plain = httpx2.Client(base_url=server, verify=tls, timeout=30.0)  # /readyz: not a resource
        self._resources: dict[tuple[str, str], Resource] = {}

    def close(self) -> None:
        self.client.close()
        self._plain.close()

    def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST `body` to `path` as the admin, outside lightkube (a review, which must carry no field manager)."""
        response = self._plain.post(path, json=dict(body))
        if response.status_code >= 400:
            raise ApiError(response.status_code, response.text, f"POST {path}")
        return dict(response.json())

    def ready(self) -> bool:
        """Whether the API server's /readyz answers 200 (raises httpx2.HTTPError while it does not listen)."""
        return self._plain.get("/readyz").status_code == 200

    def resource(self, api_version: str, kind: str) -> Resource:
        """lightkube's generic resource class for a kind: plural and scope from lightkube's built-in resources,
        else from the cluster's CustomResourceDefinitions (read again on a miss: a test may just have made one)."""
        if (api_version, kind) not in self._resources:
            try:
                builtin = resource_registry.load(api_version, kind)
            except LoadResourceError:
                info, namespaced = self._custom_resource(api_version, kind)
            else:
                info, namespaced = api_info(builtin), issubclass(builtin, NamespacedResource)
            base = GenericNamespacedResource if namespaced else GenericGlobalResource
            # lightkube's create_*_resource would register the class globally, where the typed built-in classes
            # live; a class of our own, with the same ApiInfo, keeps this client's dicts out of that registry.
            self._resources[(api_version, kind)] = type(kind, (base,), {"_api_info": info})
        return self._resources[(api_version, kind)]

    def _custom_resource(self, api_version: str, kind: str) -> tuple[ApiInfo, bool]:
        group, _, version = api_version.rpartition("/")
        crds = self._call("list CustomResourceDefinitions", lambda: list(self.client.list(CustomResourceDefinition)))
        for crd in crds:
            spec = crd.spec
            if spec is None or (spec.group, spec.names.kind) != (group, kind):
                continue
            if any(v.name == version for v in spec.versions):
                return create_api_info(group, version, kind, spec.names.plural), spec.scope == "Namespaced"
        raise ApiError(404, f"no {kind} in {api_version}", "discovery")

    @staticmethod
    def _call(what: str, request: Callable[[], T]) -> T:
        try:
            return request()
        except httpx2.HTTPStatusError as err:  # lightkube's ApiError is one
            try:
                body: Any = err.response.json()
            except ValueError:
                body = err.response.text
            raise ApiError(err.response.status_code, body, what) from None

    @staticmethod
    def _what(verb: str, kind: str, name: str, namespace: str | None) -> str:
        return f"{verb} {kind} {namespace or ''}/{name}"

    def apply(self, obj: Mapping[str, Any], manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply with strict field validation: unknown or duplicate fields are errors, as are
        invalid values, immutable-field changes and admission rejections."""
        res = self.resource(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        what = self._what("apply", obj["kind"], meta["name"], meta.get("namespace"))
        applied = self._call(
            what, lambda: self.client.apply(res.from_dict(dict(obj)), field_manager=manager, force=True)
        )
        return dict(applied.to_dict())

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        res = self.resource(obj["apiVersion"], obj["kind"])
        meta = obj["metadata"]
        what = self._what("create", obj["kind"], meta["name"], meta.get("namespace"))
        return dict(self._call(what, lambda: self.client.create(res.from_dict(dict(obj)))).to_dict())

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        res = self.resource(api_version, kind)

        def get() -> Generic:
            if issubclass(res, GenericNamespacedResource):
                return self.client.get(res, name, namespace=namespace)
            return self.client.get(res, name)

        try:
            return dict(self._call(self._what("get", kind, name, namespace), get).to_dict())
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def items(
        self, api_version: str, kind: str, namespace: str | None = None, selector: str | None = None
    ) -> list[dict[str, Any]]:
        """Objects of a kind in `namespace`, or in every namespace when it is None; `selector` is a label selector
        of `key=value` terms joined by commas."""
        res = self.resource(api_version, kind)
        terms = label_terms(selector) if selector else {}

        def items() -> list[Generic]:
            if issubclass(res, GenericNamespacedResource):
                return list(self.client.list(res, namespace=namespace or ALL_NS, labels={**terms}))
            return list(self.client.list(res, labels={**terms}))

        return [dict(obj.to_dict()) for obj in self._call(f"list {kind} in {namespace or 'all namespaces'}", items)]

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> None:
        """Delete in the foreground (dependents first); an object that is not there is not an error."""
        res = self.resource(api_version, kind)

        def delete() -> None:
            if issubclass(res, GenericNamespacedResource):
                self.client.delete(res, name, namespace=namespace, cascade=CascadeType.FOREGROUND)
            else:
                self.client.delete(res, name, cascade=CascadeType.FOREGROUND)

        try:
            self._call(self._what("delete", kind, name, namespace), delete)
        except ApiError as err:
            if err.status != 404:
                raise

    def events(self, namespace: str) -> list[dict[str, Any]]:
        return self.items("v1", "Event", namespace)

    def logs(self, namespace: str, name: str, container: str | None = None) -> str:
        """A pod's log so far (one container's, where the pod has several)."""
        what = f"log of pod {namespace}/{name}"
        return "".join(self._call(what, lambda: list(self.client.log(name, namespace=namespace, container=container))))


def label_terms(selector: str) -> dict[str, str]:
    """`a=b,c=d` as lightkube's label dict; other selector forms are refused rather than misread."""
    terms = {}
    for term in selector.split(","):
        label, sep, value = term.partition("=")
        if not sep or label.endswith("!") or value.startswith("=") or not label.strip():
            raise ValueError(f"label selector {selector!r}: only key=value terms are supported")
        terms[label.strip()] = value.strip()
    return terms


def condition(obj: Mapping[str, Any] | None, kind: str) -> str | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return str(c.get("status"))
    return None
