"""chi-persist: one student's persistent ML platform on Chameleon KVM@TACC."""

import pulumi

from components import (
    PLATFORM_PORTS,
    AccessRules,
    AccessRulesArgs,
    Lease,
    LeaseArgs,
    Node,
    NodeArgs,
    PersistentVolume,
    Provisioning,
    ProvisioningArgs,
)
from components.access import opened_ports, ports_for
from components.adoption import AdoptionRefused, pending_create_notes, plan_adoption
from components.lease import lease_cloud_problem, own_lease_end
from components.project_files import PROJECT_ROOT, first_boot_user_data
from components.quotas import QuotaExceeded, check_quotas, stack_demand
from components.settings import (
    NAMESPACE,
    SettingsError,
    load,
    private_key,
    private_key_password,
)
from components.survey import SurveyFailed, survey_stack
from components.volume_plan import VolumeRefused, plan_volume

stack = pulumi.get_stack()
# Every setting, what the state holds and what the cloud already holds are checked before any
# resource exists: a resource of this stack that the state lacks (an interrupted run, another
# machine) is adopted, never made twice.
try:
    settings = load(pulumi.Config(NAMESPACE), stack)
    if settings.lease_cloud and (problem := lease_cloud_problem(settings.lease_cloud)):
        raise SettingsError([problem])
    access_args = AccessRulesArgs(
        group_name=settings.security_group_name,
        allowed_cidrs=settings.allowed_cidrs,
        existing_groups=settings.existing_security_groups,
        ports=ports_for(settings.platform_access),
        owner_tag=settings.owner_tag,
        owner_description=settings.owner_suffix,
    )
    survey = survey_stack(settings, stack, opened_ports(access_args), PROJECT_ROOT, pulumi.log.info)
    adoption = plan_adoption(survey.observations, stack)
    try:
        volume_args = plan_volume(settings, stack, survey.volume)
    except SettingsError as error:
        # Everything that stands in the way is said at once.
        adoption.raise_problems(also=[str(problem) for problem in error.problems])
        raise
    adoption.raise_problems()
    # What this `up` would add to the project (what exists adds nothing), against its quotas.
    check_quotas(settings, stack_demand(settings, volume_args))
    # Only now, with every check passed: a server of this stack that holds no data and that
    # no state holds (an interrupted run made it) goes, so that a new one takes its port.
    if not pulumi.runtime.is_dry_run():
        for managed, resource_id in adoption.discards:
            survey.discard(managed, resource_id)
except SettingsError as error:
    raise pulumi.RunError(error.report()) from None
except (SurveyFailed, VolumeRefused, AdoptionRefused, QuotaExceeded) as error:
    raise pulumi.RunError(str(error)) from None
for note in [*settings.ssh_notes, *settings.access_notes]:
    pulumi.log.warn(note)
for note in settings.lease_notes:
    pulumi.log.info(note)
for note in [*adoption.notes, *volume_args.notes]:
    pulumi.log.info(note)
for note in [
    *survey.notes,
    *adoption.warnings,
    *pending_create_notes(survey.state, adoption, stack),
]:
    pulumi.log.warn(note)

access_args.adoption = adoption
access = AccessRules("access", access_args)
volume = PersistentVolume("data", volume_args)
# KVM@TACC boots servers only from a reserved flavor: the stack's own lease, unless the
# student brings a reservation. The server boots the lease's reservation id, so a new lease
# (a renewal, the old one ended, or another flavor) replaces the server.
lease = None
if settings.makes_lease:
    lease = Lease(
        "lease",
        LeaseArgs(
            name=settings.lease_name,
            flavor_name=settings.flavor,
            duration_seconds=settings.lease_duration_seconds,
            lease_duration=settings.lease_duration,
            renew_window_seconds=settings.lease_renew_window_seconds,
            cloud=settings.lease_cloud,
            adopt_lease_id=adoption.import_id("lease"),
        ),
    )
    flavor_id = lease.reservation_id
    lease_end = lease.end_date
else:
    flavor_id = settings.reservation
    lease_end, lease_note = own_lease_end(settings.reservation or "", settings.lease_cloud)
    pulumi.log.info(lease_note)
node = Node(
    "node",
    NodeArgs(
        server_name=settings.server_name,
        image=settings.image,
        flavor_id=flavor_id,
        flavor_name=None,
        key_pair=settings.key_pair,
        network=settings.network,
        floating_ip_pool=settings.floating_ip_pool,
        security_group_ids=access.security_group_ids,
        volume_id=volume.volume_id,
        user_data=first_boot_user_data(),
        owner=settings.owner,
        owner_tag=settings.owner_tag,
        adoption=adoption,
    ),
)
provisioning = Provisioning(
    "provisioning",
    ProvisioningArgs(
        host=node.floating_ip,
        server_id=node.server_id,
        attachment_id=node.attachment_id,
        volume_id=volume.volume_id,
        volume_size_gib=volume.size_gib,
        mount_point=settings.mount_point,
        private_key=private_key(pulumi.Config(NAMESPACE), settings),
        private_key_password=private_key_password(pulumi.Config(NAMESPACE), settings),
        lease_end=lease_end,
        platform_access=settings.platform_access,
    ),
)

ip = node.floating_ip
credentials = provisioning.credentials
token = credentials.apply(lambda values: values.get("jupyter_token", ""))
pulumi.export("floating_ip", ip)
# The student's own ssh is pinned to the server's key too (a recycled server has a new one).
pulumi.export("known_hosts", pulumi.Output.format("{0} {1}", ip, provisioning.host_key))
pulumi.export(
    "ssh_command",
    pulumi.Output.all(ip, provisioning.host_key).apply(
        lambda values: settings.ssh_command(values[0], values[1])
    ),
)
pulumi.export("platform_access", settings.platform_access)
pulumi.export("mlflow_url", pulumi.Output.format("http://{0}:{1}", ip, PLATFORM_PORTS["mlflow"]))
pulumi.export(
    "jupyter_url",
    pulumi.Output.secret(
        pulumi.Output.format("http://{0}:{1}/lab?token={2}", ip, PLATFORM_PORTS["jupyter"], token)
    ),
)
pulumi.export(
    "minio_console_url",
    pulumi.Output.format("http://{0}:{1}", ip, PLATFORM_PORTS["minio-console"]),
)
pulumi.export(
    "minio_api_url", pulumi.Output.format("http://{0}:{1}", ip, PLATFORM_PORTS["minio-api"])
)
# MLflow's login (its basic-auth app's admin, generated once on the volume).
pulumi.export(
    "mlflow_username",
    pulumi.Output.secret(credentials.apply(lambda values: values.get("mlflow_user", ""))),
)
pulumi.export(
    "mlflow_password",
    pulumi.Output.secret(credentials.apply(lambda values: values.get("mlflow_password", ""))),
)
pulumi.export("volume_id", volume.volume_id)
pulumi.export("server_id", node.server_id)
pulumi.export("platform_credentials", credentials)
if lease is not None:
    pulumi.export("lease_id", lease.lease_id)
    pulumi.export("lease_end", lease.end_date)
