/**
 * HEALTH_PORT's server (lib/readiness.ts): liveness and readiness of a node that serves no other
 * HTTP, on a real port. Readiness names a failing dependency with 503, and is 200 again once it
 * answers.
 */
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { addReadinessProbe, startHealthServer } from "../../lib/readiness";
import { freePort } from "../helpers/processes";
import { http, startBroker, type RunningSystem } from "../helpers/system";

describe("HEALTH_PORT: /health/live and /health/ready of a node without the gateway", () => {
	let node: RunningSystem;
	let server: import("node:http").Server;
	let base = "";
	let storeUp = true;

	before(async () => {
		node = await startBroker([]);
		addReadinessProbe(node.broker, "postgresql", () => {
			if (!storeUp) throw new Error("connect ECONNREFUSED 127.0.0.1:5432");
		});
		const port = await freePort();
		server = startHealthServer(node.broker, port);
		base = `http://127.0.0.1:${port}`;
		await new Promise(r => server.once("listening", r));
	});
	after(async () => {
		server?.close();
		await node?.stop();
	});

	it("live is 200; ready is 200 with every check ok, 503 naming what fails, and 200 again", async () => {
		const live = await http(base, "GET", "/health/live");
		assert.equal(live.status, 200);
		assert.deepEqual(live.body, { status: "ok", node: node.broker.nodeID });

		const ready = await http(base, "GET", "/health/ready");
		assert.equal(ready.status, 200);
		assert.deepEqual(ready.body, { status: "ready", node: node.broker.nodeID, failing: [], checks: { postgresql: "ok", services: "ok" } });

		storeUp = false;
		const down = await http(base, "GET", "/health/ready");
		assert.equal(down.status, 503);
		assert.deepEqual(down.body.failing, ["postgresql"]);
		assert.match(down.body.checks.postgresql, /ECONNREFUSED/);

		storeUp = true;
		assert.equal((await http(base, "GET", "/health/ready")).status, 200);
	});

	it("anything else: 404, and 405 for other methods", async () => {
		assert.equal((await http(base, "GET", "/metrics")).status, 404);
		assert.equal((await http(base, "POST", "/health/ready", { body: {} })).status, 405);
	});
});
