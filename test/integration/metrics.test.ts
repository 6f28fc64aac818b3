/**
 * Metrics under load: with METRICS_PORT a node serves Moleculer's Prometheus reporter, and the chat
 * metrics are there with real values after messages flow (sent, delivered, send-to-deliver
 * latency, open sockets, outbox backlog, rate-limit rejections, cache lookups). Every metric a
 * panel of the Grafana dashboard (ops/grafana/dashboards/parley.json) queries is exposed.
 */
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, it } from "node:test";
import { metricsOptions } from "../../lib/metrics";
import { freePort } from "../helpers/processes";
import { call, connectSocket, emitAck, type TestSocket, waitForEvent } from "../helpers/sockets";
import { registerUser, startBroker, tempDir, type RunningSystem, waitFor } from "../helpers/system";

const DASHBOARD = path.join(__dirname, "..", "..", "ops", "grafana", "dashboards", "parley.json");
const MESSAGES = 12;

/** `name{labels} value` lines of a Prometheus text page, by series. */
function parse(text: string): Map<string, number> {
	const out = new Map<string, number>();
	for (const line of text.split("\n")) {
		if (!line || line.startsWith("#")) continue;
		const i = line.lastIndexOf(" ");
		out.set(line.slice(0, i), Number(line.slice(i + 1)));
	}
	return out;
}

/** The sum of a metric's series whose labels include `match` (e.g. `namespace="/chat"`). */
function total(series: Map<string, number>, name: string, match = ""): number {
	let sum = 0;
	for (const [key, value] of series) if ((key === name || key.startsWith(`${name}{`)) && key.includes(match)) sum += value;
	return sum;
}

describe("metrics", () => {
	let sys: RunningSystem;
	let port: number;
	const sockets: TestSocket[] = [];

	before(async () => {
		process.env.JWT_SECRET = "metrics-test-secret-0123456789abcdef";
		process.env.DATA_DIR = tempDir();
		process.env.BCRYPT_ROUNDS = "4";
		process.env.RATE_LIMIT = "5";
		delete process.env.DATABASE_URL;
		port = await freePort();
		sys = await startBroker(["api", "users", "conversations", "messages", "notifications", "files"], { metrics: metricsOptions(port) as never });
	});
	after(async () => {
		for (const s of sockets) s.close();
		await sys?.stop();
		delete process.env.RATE_LIMIT;
	});

	it("exposes the chat metrics with the values of real traffic, and every metric the dashboard queries", async () => {
		const base = sys.baseUrl;
		const a = await registerUser(base, "ma");
		const b = await registerUser(base, "mb");
		const sa = await connectSocket(base, a.accessToken);
		const sb = await connectSocket(base, b.accessToken);
		sockets.push(sa, sb);
		const conv = await call(sa, "conversation:create", { type: "private", participants: [b.id] });
		await call(sb, "conversation:accept", { conversationId: conv.id });
		for (let i = 0; i < MESSAGES; i++) {
			await call(sa, "message:send", { conversationId: conv.id, content: `m${i}`, clientId: `metrics-${i}` });
			await new Promise(r => setTimeout(r, 250)); // under RATE_LIMIT
		}
		await waitForEvent(sb, "message:created", m => m.content === `m${MESSAGES - 1}`);
		// A burst over the socket limit (made-up events: counted, then refused).
		await Promise.all(Array.from({ length: 20 }, () => emitAck(sb, "no:such-event", {})));

		const series = await waitFor(async () => {
			const res = await fetch(`http://127.0.0.1:${port}/metrics`);
			const s = parse(await res.text());
			return total(s, "parley_messages_sent_total") >= MESSAGES ? s : null;
		}, 10_000);

		assert.equal(total(series, "parley_messages_sent_total"), MESSAGES);
		// Each message reached both members' sockets (the sender's own devices get it too).
		assert.ok(total(series, "parley_messages_delivered_total") >= MESSAGES, "delivered");
		assert.ok(total(series, "parley_message_send_to_deliver_seconds_count") >= MESSAGES, "latency observed");
		assert.ok(total(series, "parley_message_send_to_deliver_seconds_bucket", 'le="+Inf"') >= MESSAGES, "latency buckets");
		assert.equal(total(series, "parley_sockets_open", 'namespace="/chat"'), 2);
		assert.ok(series.has("parley_outbox_backlog") || [...series.keys()].some(k => k.startsWith("parley_outbox_backlog{")), "outbox backlog");
		assert.ok(total(series, "parley_rate_limit_rejections_total", 'limit="socket"') > 0, "rate-limit rejections");
		assert.ok(total(series, "moleculer_cacher_get_total") > 0, "cache lookups");
		assert.ok(total(series, "moleculer_request_total") > 0, "Moleculer's own metrics");

		// Every metric a dashboard panel queries is exposed (names in PromQL, before `{`, `[` or `)`).
		const dashboard = JSON.parse(fs.readFileSync(DASHBOARD, "utf8")) as { panels: { title: string; targets: { expr: string }[] }[] };
		const exposed = new Set([...series.keys()].map(k => k.split("{")[0]));
		const queried = new Set(dashboard.panels.flatMap(p => p.targets.flatMap(t => [...t.expr.matchAll(/\b((?:parley|moleculer)_[a-z0-9_]+)\b/g)].map(m => m[1]))));
		const missing = [...queried].filter(name => !exposed.has(name));
		// The durable queues and dead letters exist only on RabbitMQ, and an error counter only after an error.
		const needsRabbit = ["parley_durable_queue_messages", "parley_durable_queue_consumers", "parley_dead_letter_messages", "moleculer_request_error_total"];
		assert.deepEqual(missing.filter(n => !needsRabbit.includes(n)), [], "queried by the dashboard but not exposed");
		assert.ok(queried.size >= 10, `${queried.size} metrics queried`);
	});
});
