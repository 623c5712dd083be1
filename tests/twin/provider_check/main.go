// Command provider_check drives terraform-provider-openstack v3.4.0's own resource code
// against a running twin: the program's resources created, read, refreshed, updated and
// deleted through the provider's CRUD functions, as the Pulumi bridge calls them.
//
// Usage: provider_check KEY_PAIR TWIN_URL   (OS_CLOUD and OS_CLIENT_CONFIG_FILE from DIR/env)
//
// Every step prints "ok   <step>" or "FAIL <step>: <what the provider said>" and the
// command exits 1 at the first failure. The provider's debug log goes to $PROVIDER_LOG when set.
// The plugin SDK here is upstream's; the Pulumi plugin links Pulumi's fork of it, whose
// resource code paths are the same provider functions.
package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/hashicorp/go-cty/cty"
	"github.com/hashicorp/terraform-plugin-sdk/v2/diag"
	"github.com/hashicorp/terraform-plugin-sdk/v2/helper/schema"
	"github.com/hashicorp/terraform-plugin-sdk/v2/terraform"
	"github.com/terraform-provider-openstack/terraform-provider-openstack/v3/openstack"
)

const (
	netid        = "ab1234"
	instance     = "openstack_compute_instance_v2"
	attachment   = "openstack_compute_volume_attach_v2"
	volumeKind   = "openstack_blockstorage_volume_v3"
	portKind     = "openstack_networking_port_v2"
	floatingKind = "openstack_networking_floatingip_v2"
	groupKind    = "openstack_networking_secgroup_v2"
	ruleKind     = "openstack_networking_secgroup_rule_v2"
)

var (
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Minute)
	provider    = openstack.Provider()
)

func fail(format string, arguments ...any) {
	fmt.Printf("FAIL "+format+"\n", arguments...)
	cancel()
	os.Exit(1)
}

func check(step string, diags diag.Diagnostics) {
	if diags.HasError() {
		for _, d := range diags {
			fmt.Printf("FAIL %s: %s %s\n", step, d.Summary, d.Detail)
		}
		cancel()
		os.Exit(1)
	}
	fmt.Printf("ok   %s\n", step)
}

// rawConfig marks which attributes the configuration sets: all the provider's getOkExists
// looks at (a null attribute is unset).
func rawConfig(attributes map[string]*schema.Schema, set map[string]any) cty.Value {
	values := map[string]cty.Value{}
	for key := range attributes {
		if _, ok := set[key]; ok {
			values[key] = cty.StringVal("set")
		} else {
			values[key] = cty.NullVal(cty.DynamicPseudoType)
		}
	}
	return cty.ObjectVal(values)
}

func data(resource *schema.Resource, id string, set map[string]any) *schema.ResourceData {
	d := resource.Data(&terraform.InstanceState{ID: id, RawConfig: rawConfig(resource.Schema, set)})
	for key, value := range set {
		if err := d.Set(key, value); err != nil {
			fail("set %s: %s", key, err)
		}
	}
	return d
}

func create(kind string, set map[string]any) *schema.ResourceData {
	resource := provider.ResourcesMap[kind]
	d := data(resource, "", set)
	check("create "+kind, resource.CreateContext(ctx, d, provider.Meta()))
	check("read "+kind, resource.ReadContext(ctx, d, provider.Meta()))
	return d
}

func refresh(kind string, d *schema.ResourceData) {
	check("refresh "+kind, provider.ResourcesMap[kind].ReadContext(ctx, d, provider.Meta()))
	if d.Id() == "" {
		fail("refresh %s: the resource is gone", kind)
	}
}

// update plans the change from the whole new configuration, then applies it, as the engine does.
func update(kind string, d *schema.ResourceData, set map[string]any) *schema.ResourceData {
	resource := provider.ResourcesMap[kind]
	state := d.State()
	config := terraform.NewResourceConfigRaw(set)
	config.CtyValue = rawConfig(resource.Schema, set)
	plan, err := resource.Diff(ctx, state, config, provider.Meta())
	if err != nil || plan == nil || plan.Empty() {
		fail("plan %s: %v (plan %v)", kind, err, plan)
	}
	plan.RawConfig = config.CtyValue
	applied, diags := resource.Apply(ctx, state, plan, provider.Meta())
	check("update "+kind, diags)
	return resource.Data(applied)
}

func destroy(kind string, d *schema.ResourceData) {
	resource := provider.ResourcesMap[kind]
	id := d.Id()
	check("delete "+kind, resource.DeleteContext(ctx, d, provider.Meta()))
	gone := data(resource, id, map[string]any{})
	check("read after delete "+kind, resource.ReadContext(ctx, gone, provider.Meta()))
	if gone.Id() != "" {
		fail("%s %s still exists after its delete", kind, id)
	}
}

func lookup(kind string, set map[string]any) *schema.ResourceData {
	resource := provider.DataSourcesMap[kind]
	d := data(resource, "", set)
	check("data "+kind, resource.ReadContext(ctx, d, provider.Meta()))
	return d
}

func vanish(twinURL, serverID string) {
	response, err := http.Post(twinURL+"/_twin/servers/"+serverID+"/vanish", "application/json", nil)
	if err != nil {
		fail("vanish %s: %s", serverID, err)
	}
	defer response.Body.Close()
	if response.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(response.Body)
		fail("vanish %s: %d %s", serverID, response.StatusCode, body)
	}
	fmt.Printf("ok   server %s vanished\n", serverID)
}

func main() {
	defer cancel()
	if len(os.Args) != 3 {
		fmt.Println("usage: provider_check KEY_PAIR TWIN_URL")
		os.Exit(2)
	}
	keyPair, twinURL := os.Args[1], os.Args[2]
	log.SetOutput(io.Discard)
	if path := os.Getenv("PROVIDER_LOG"); path != "" {
		file, err := os.Create(path)
		if err != nil {
			fail("provider log %s: %s", path, err)
		}
		defer file.Close()
		log.SetOutput(file)
	}

	config := terraform.NewResourceConfigRaw(map[string]any{})
	config.CtyValue = rawConfig(provider.Schema, map[string]any{})
	check("configure (OS_CLOUD)", provider.Configure(ctx, config))

	network := lookup("openstack_networking_network_v2", map[string]any{"name": "sharednet1"})
	group := create(groupKind, map[string]any{
		"name": "persist-" + netid, "description": "chi-persist: SSH, Jupyter, MLflow and MinIO",
	})
	var rules []*schema.ResourceData
	for _, port := range []int{22, 8000, 8888, 9000, 9001} {
		rules = append(rules, create(ruleKind, map[string]any{
			"security_group_id": group.Id(), "direction": "ingress", "ethertype": "IPv4",
			"protocol": "tcp", "port_range_min": port, "port_range_max": port,
			"remote_ip_prefix": "0.0.0.0/0", "description": fmt.Sprintf("TCP %d from 0.0.0.0/0", port),
		}))
	}
	if found := lookup("openstack_networking_secgroup_v2", map[string]any{"name": "persist-" + netid}); found.Id() != group.Id() {
		fail("the security group data source found %s, not %s", found.Id(), group.Id())
	}
	volume := create(volumeKind, map[string]any{
		"name": "block-persist-" + netid, "size": 2, "description": "chi-persist data volume",
	})
	port := create(portKind, map[string]any{
		"name": "node-persist-" + netid, "network_id": network.Id(),
		"security_group_ids": []any{group.Id()}, "admin_state_up": true,
	})
	floating := create(floatingKind, map[string]any{
		"pool": "public", "port_id": port.Id(), "description": "chi-persist: node-persist-" + netid,
	})
	if floating.Get("pool") != "public" || floating.Get("address") == "" {
		fail("floating IP read back pool %v address %v", floating.Get("pool"), floating.Get("address"))
	}

	for round := 1; round <= 2; round++ {
		server := create(instance, map[string]any{
			"name": "node-persist-" + netid, "image_name": "CC-Ubuntu24.04", "flavor_name": "m1.large",
			"key_pair": keyPair, "network": []any{map[string]any{"port": port.Id()}},
			"user_data": "#!/bin/bash\necho first boot\n", "stop_before_destroy": true,
			"metadata": map[string]any{"chi-persist": "node"},
		})
		if server.Get("power_state") != "active" || server.Get("flavor_name") != "m1.large" ||
			server.Get("image_name") != "CC-Ubuntu24.04" || server.Get("access_ip_v4") == "" {
			fail("instance read back power_state %v flavor %v image %v access_ip_v4 %v",
				server.Get("power_state"), server.Get("flavor_name"), server.Get("image_name"),
				server.Get("access_ip_v4"))
		}
		attached := create(attachment, map[string]any{"instance_id": server.Id(), "volume_id": volume.Id()})
		for kind, d := range map[string]*schema.ResourceData{
			groupKind: group, volumeKind: volume, portKind: port, floatingKind: floating,
			instance: server, attachment: attached,
		} {
			refresh(kind, d)
		}
		if round == 1 {
			volume = update(volumeKind, volume, map[string]any{
				"name": "block-persist-" + netid, "size": 3, "enable_online_resize": true,
				"description": "chi-persist data volume",
			})
			refresh(volumeKind, volume)
			if volume.Get("size") != 3 {
				fail("volume size after the online extend: %v", volume.Get("size"))
			}
			destroy(attachment, attached)
			destroy(instance, server)
			continue
		}
		// The lease ends: the server vanishes, and a refresh drops it and its attachment.
		vanish(twinURL, server.Id())
		for kind, d := range map[string]*schema.ResourceData{instance: server, attachment: attached} {
			check("refresh after vanish "+kind, provider.ResourcesMap[kind].ReadContext(ctx, d, provider.Meta()))
			if d.Id() != "" {
				fail("%s is still there after its server vanished", kind)
			}
		}
		refresh(volumeKind, volume)
	}

	destroy(floatingKind, floating)
	destroy(portKind, port)
	for _, rule := range rules {
		destroy(ruleKind, rule)
	}
	destroy(groupKind, group)
	destroy(volumeKind, volume)
	fmt.Println("ok   every call answered as the provider expects")
}
