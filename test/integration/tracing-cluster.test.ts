/**
 * Tracing across nodes: with TRACING_EXPORTER's options (here the `Event` exporter, which sends
 * finished spans as Moleculer events), one request's `X-Trace-Id` is the trace id of every span it
 * causes, on the gateway node and on the chat node behind it over RabbitMQ. A collector node
 * gathers the spans, as a tracing backend would.
 */
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { after, before, describe, it } from "node:test";
import { removeNamespaceTopology } from "../../lib/durable-events";
import { tracingOptions } from "../../lib/metrics";
import { clusterTestEnv, http, registerUser, skipWithoutAmqp, skipWithoutPostgres, startBroker, TEST_AMQP_URL, type RunningSystem, waitFor } from "../helpers/system";

interface Span {
	name: string;
	traceID: string;
	parentID: string | null;
	service?: { name: string };
	tags?: { nodeID?: string; action?: { name: string } };
}

describe("tracing across nodes over RabbitMQ", { skip: skipWithoutAmqp || skipWithoutPostgres }, () => {
	const namespace = `parley-trace-${crypto.randomBytes(4).toString("hex")}`;
	const spans: Span[] = [];
	const running: RunningSystem[] = [];
	let chat: RunningSystem;
	let api: RunningSystem;
	let dropDb: () => Promise<void>;

	before(async () => {
		dropDb = await clusterTestEnv("tracing-cluster-secret-0123456789");
		delete process.env.MONGO_URL;
		const shared = {
			namespace,
			transporter: { type: "AMQP", options: { url: TEST_AMQP_URL, socketOptions: { noDelay: true }, prefetch: 100, autoDeleteQueues: 60_000 } },
		};
		const collector = await startBroker([], shared);
		collector.broker.createService({
			name: "trace-collector",
			events: {
				"$tracing.spans"(ctx: { params: Span[] }) {
					spans.push(...ctx.params);
				},
			},
		});
		chat = await startBroker(["users", "conversations", "messages"], { ...shared, tracing: tracingOptions("Event") });
		api = await startBroker(["api"], { ...shared, tracing: tracingOptions("Event") });
		running.push(collector, chat, api);
		await api.broker.waitForServices(["users", "conversations", "messages"], 30_000);
		await chat.broker.waitForServices(["trace-collector"], 30_000);
		await api.broker.waitForServices(["trace-collector"], 30_000);
	});

	after(async () => {
		for (const sys of running.reverse()) await sys.stop();
		await dropDb?.();
		await removeNamespaceTopology(TEST_AMQP_URL, namespace).catch(() => undefined);
		delete process.env.DATABASE_URL;
	});

	it("one X-Trace-Id names every span of a message's path, on the gateway and on the chat node", async () => {
		const a = await registerUser(api.baseUrl, "tra");
		const b = await registerUser(api.baseUrl, "trb");
		const conv = await http(api.baseUrl, "POST", "/conversations", { token: a.accessToken, body: { type: "group", name: "traced", participants: [b.id] } });
		assert.equal(conv.status, 201, conv.text);

		const traceId = `trace-${crypto.randomBytes(8).toString("hex")}`;
		const sent = await http(api.baseUrl, "POST", `/conversations/${conv.body.id}/messages`, {
			token: a.accessToken,
			headers: { "X-Trace-Id": traceId },
			body: { content: "follow me" },
		});
		assert.equal(sent.status, 200, sent.text);
		assert.equal(sent.headers.get("x-trace-id"), traceId, "the answer names the trace");

		// The Event exporter sends its batch every 5 s.
		const mine = await waitFor(async () => {
			const found = spans.filter(s => s.traceID === traceId);
			const names = new Set(found.map(s => s.name));
			const nodes = new Set(found.map(s => s.tags?.nodeID));
			// Each node's exporter sends its own batch.
			const both = nodes.has(api.broker.nodeID) && nodes.has(chat.broker.nodeID);
			return both && names.has("action 'messages.send'") && names.has("action 'conversations.authorizeSend'") ? found : null;
		}, 20_000, 250);
		// One tree: every span but the root has its parent in the trace.
		const ids = new Set(mine.map(s => (s as unknown as { id: string }).id));
		const roots = mine.filter(s => !s.parentID || !ids.has(s.parentID));
		assert.equal(roots.length, 1, `one root span, got ${roots.map(r => r.name).join(", ")}`);
		assert.equal(roots[0].tags?.nodeID, api.broker.nodeID, "rooted at the gateway's HTTP request");
		console.log(`  trace ${traceId}: ${mine.map(s => `${s.name} on ${s.tags?.nodeID === api.broker.nodeID ? "gateway" : "chat node"}`).join("; ")}`);
	});
});
