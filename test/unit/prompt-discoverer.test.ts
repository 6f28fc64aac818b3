/**
 * The discoverer that checks heartbeats every second: a node silent for longer than
 * heartbeatTimeout is dropped within about a second (asserted: 5 s), not up to another heartbeatTimeout (15 s) later.
 * Two brokers over Moleculer's in-process Fake transporter; the silence is made by backdating the
 * remote node's last heartbeat (nothing is sent meanwhile: heartbeats come every 5 s).
 */
import assert from "node:assert/strict";
import { after, describe, it } from "node:test";
import { ServiceBroker } from "moleculer";
import { PromptDiscoverer } from "../../lib/prompt-discoverer";

function broker(nodeID: string, namespace: string, onDisconnected?: (id: string) => void) {
	const b = new ServiceBroker({
		nodeID,
		namespace,
		logger: false,
		transporter: "Fake",
		heartbeatInterval: 5,
		heartbeatTimeout: 15,
		registry: { discoverer: new PromptDiscoverer() },
	});
	if (onDisconnected) {
		b.createService({ name: "watcher", events: { "$node.disconnected": (ctx: { params: { node: { id: string } } }) => onDisconnected(ctx.params.node.id) } });
	}
	return b;
}

describe("PromptDiscoverer", () => {
	const namespace = `prompt-${process.pid}`;
	const dropped: { id: string; at: number }[] = [];
	const a = broker("a", namespace, id => dropped.push({ id, at: Date.now() }));
	const b = broker("b", namespace);
	after(async () => {
		await b.stop();
		await a.stop();
	});

	it("drops a node within about a second once its heartbeats are older than heartbeatTimeout", async () => {
		await a.start();
		await b.start();
		await a.waitForServices([], 5_000);
		for (let i = 0; i < 50 && !a.registry.nodes.get("b")?.available; i++) await new Promise(r => setTimeout(r, 100));
		const node = a.registry.nodes.get("b");
		assert.ok(node?.available, "a knows b");

		// b's last heartbeat, as a's registry records it, is now 16 s old.
		const silentAt = Date.now();
		node.lastHeartbeatTime = Math.round(process.uptime()) - 16;
		for (let i = 0; i < 60 && dropped.length === 0; i++) await new Promise(r => setTimeout(r, 100));
		assert.deepEqual(dropped.map(d => d.id), ["b"]);
		assert.ok(dropped[0].at - silentAt <= 5_000, `dropped after ${dropped[0].at - silentAt} ms`);
	});
});
