"""Neutron's paths on the twin, under /network (the catalog's unversioned network endpoint)."""

from __future__ import annotations

from flask import Blueprint

from tests.twin.services.core import NetworkError
from tests.twin.services.network import responses

SERVICE = "network"
PREFIX = "/network"
AUTHENTICATED = True
UNAUTHENTICATED_ENDPOINTS = ("network.versions",)

blueprint = Blueprint(SERVICE, __name__)
ROUTES = (
    ("/", "GET", responses.versions),
    ("/v2.0", "GET", responses.version),
    ("/v2.0/networks", "GET", responses.list_networks),
    ("/v2.0/networks/<network_id>", "GET", responses.show_network),
    ("/v2.0/subnets", "GET", responses.list_subnets),
    ("/v2.0/subnets/<subnet_id>", "GET", responses.show_subnet),
    ("/v2.0/ports", "GET", responses.list_ports),
    ("/v2.0/ports", "POST", responses.create_port),
    ("/v2.0/ports/<port_id>", "GET", responses.show_port),
    ("/v2.0/ports/<port_id>", "PUT", responses.update_port),
    ("/v2.0/ports/<port_id>", "DELETE", responses.delete_port),
    ("/v2.0/floatingips", "GET", responses.list_floatingips),
    ("/v2.0/floatingips", "POST", responses.create_floatingip),
    ("/v2.0/floatingips/<floatingip_id>", "GET", responses.show_floatingip),
    ("/v2.0/floatingips/<floatingip_id>", "PUT", responses.update_floatingip),
    ("/v2.0/floatingips/<floatingip_id>", "DELETE", responses.delete_floatingip),
    ("/v2.0/security-groups", "GET", responses.list_security_groups),
    ("/v2.0/security-groups", "POST", responses.create_security_group),
    ("/v2.0/security-groups/<group_id>", "GET", responses.show_security_group),
    ("/v2.0/security-groups/<group_id>", "PUT", responses.update_security_group),
    ("/v2.0/security-groups/<group_id>", "DELETE", responses.delete_security_group),
    ("/v2.0/security-group-rules", "GET", responses.list_rules),
    ("/v2.0/security-group-rules", "POST", responses.create_rule),
    ("/v2.0/security-group-rules/<rule_id>", "GET", responses.show_rule),
    ("/v2.0/security-group-rules/<rule_id>", "DELETE", responses.delete_rule),
    ("/v2.0/ports/<resource_id>/tags", "GET", responses.list_port_tags),
    ("/v2.0/ports/<resource_id>/tags", "PUT", responses.replace_port_tags),
    ("/v2.0/floatingips/<resource_id>/tags", "GET", responses.list_floatingip_tags),
    ("/v2.0/floatingips/<resource_id>/tags", "PUT", responses.replace_floatingip_tags),
    ("/v2.0/security-groups/<resource_id>/tags", "GET", responses.list_security_group_tags),
    ("/v2.0/security-groups/<resource_id>/tags", "PUT", responses.replace_security_group_tags),
    ("/v2.0/quotas/<project_id>/details", "GET", responses.quota_details),
    ("/v2.0/quotas/<project_id>/details.json", "GET", responses.quota_details),
)
for rule, method, view in ROUTES:
    blueprint.add_url_rule(rule, endpoint=view.__name__, view_func=view, methods=[method])


def unserved(status: int, message: str) -> NetworkError:
    kind = {404: "HTTPNotFound", 405: "HTTPMethodNotAllowed"}.get(status, "HTTPInternalServerError")
    return NetworkError(status, kind, message)
