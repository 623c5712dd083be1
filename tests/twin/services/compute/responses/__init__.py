"""Nova v2.1 requests and responses (nova/api/openstack/compute/servers.py, views/servers.py,
flavors.py, keypairs.py, volume_attachments.py, server_tags.py, schemas/).

Calls as terraform-provider-openstack v3.4.0 makes them (gophercloud v2.8.0
openstack/compute/v2), with no microversion header unless named:
  resource_openstack_compute_instance_v2.go
    gophercloud/utils flavors.IDFromName  GET /flavors/detail (name matched client side)
    POST /servers {name, imageRef, flavorRef, key_name, networks[{uuid, port}], user_data
      (base64), metadata, config_drive, security_groups} -> 202; GET /servers/{id} until
      ACTIVE; read: status, flavor.id (so no 2.47 embedded flavor by default), image.id,
      addresses{<network>: [{addr, version, OS-EXT-IPS:type, OS-EXT-IPS-MAC:mac_addr}]},
      security_groups[{name}], key_name, metadata; GET /flavors/{id};
      GET /servers/{id}/tags at microversion 2.26 (errors ignored);
      delete: POST action {"os-stop": null} then GET until SHUTOFF (stop_before_destroy),
      DELETE, GET until 404
  resource_openstack_compute_volume_attach_v2.go
    POST /servers/{id}/os-volume_attachments -> 200 {volumeAttachment{id, serverId,
      volumeId, device}}; GET .../{attachment id} and the volume until in-use;
      detach: GET then DELETE (202) repeated until GET answers 404 (a 400 means "not yet")
Before 2.89 an attachment's id is its volume's id (views: _translate_attachment_detail_view).
The program itself (not the provider) reads GET /limits through keystoneauth1, before it makes
anything, to check the project's quotas (nova/api/openstack/compute/limits.py, views/limits.py).

One module per resource, as moto splits a large service: versions, flavors, keypairs,
servers (and their actions), tags, metadata, volume_attachments, limits; common holds the
microversion and the headers every answer carries.
"""
