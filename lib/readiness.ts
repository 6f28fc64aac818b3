/**
 * Readiness: can this node do its work now? Each part that depends on something outside the
 * process registers a probe for it (the SQL mixin for PostgreSQL, the document mixin for MongoDB);
 * the broker's own dependencies (its services started, the transporter, a Redis cacher) are probed
 * here. GET /health/ready answers 503 naming what failed; GET /health/live only says the process is up.
 */
import type { ServiceBroker } from "moleculer";

type Probe = () => Promise<unknown> | unknown;

const probesOf = new WeakMap<ServiceBroker, Map<string, Probe>>();

export function addReadinessProbe(broker: ServiceBroker, name: string, probe: Probe): void {
	let probes = probesOf.get(broker);
	if (!probes) probesOf.set(broker, (probes = new Map()));
	probes.set(name, probe);
}

export function removeReadinessProbe(broker: ServiceBroker, name: string): void {
	probesOf.get(broker)?.delete(name);
}

export interface Readiness {
	ready: boolean;
	/** Each dependency: "ok", or why it failed. */
	checks: Record<string, string>;
	failing: string[];
}

function withTimeout(probe: Probe, ms: number): Promise<unknown> {
	return new Promise((resolve, reject) => {
		const timer = setTimeout(() => reject(new Error(`no answer in ${ms} ms`)), ms);
		Promise.resolve()
			.then(probe)
			.then(
				value => {
					clearTimeout(timer);
					resolve(value);
				},
				err => {
					clearTimeout(timer);
					reject(err);
				},
			);
	});
}

/** Runs every probe of this node at once, each given `timeoutMs`. */
export async function checkReadiness(broker: ServiceBroker, timeoutMs = 2_000): Promise<Readiness> {
	const probes = new Map<string, Probe>([
		[
			"services",
			() => {
				if (!broker.started) throw new Error("starting or stopping");
			},
		],
	]);
	const transit = (broker as unknown as { transit?: { connected: boolean; disconnecting?: boolean } }).transit;
	if (transit) {
		probes.set("transporter", () => {
			if (!transit.connected || transit.disconnecting) throw new Error("not connected");
		});
	}
	const redis = (broker.cacher as unknown as { client?: { ping?: () => Promise<unknown> } } | undefined)?.client;
	if (redis && typeof redis.ping === "function") probes.set("redis", () => redis.ping!());
	for (const [name, probe] of probesOf.get(broker) ?? []) probes.set(name, probe);

	const checks: Record<string, string> = {};
	await Promise.all(
		[...probes].map(async ([name, probe]) => {
			try {
				await withTimeout(probe, timeoutMs);
				checks[name] = "ok";
			} catch (err) {
				checks[name] = (err as Error)?.message?.slice(0, 200) || "failed";
			}
		}),
	);
	const sorted = Object.fromEntries(Object.entries(checks).sort(([a], [b]) => a.localeCompare(b)));
	const failing = Object.keys(sorted).filter(name => sorted[name] !== "ok");
	return { ready: failing.length === 0, checks: sorted, failing };
}

/** The body of GET /health/ready, on the gateway and on HEALTH_PORT alike. */
export async function readinessReport(broker: ServiceBroker) {
	const readiness = await checkReadiness(broker);
	return { ready: readiness.ready, body: { status: readiness.ready ? "ready" : "unavailable", node: broker.nodeID, failing: readiness.failing, checks: readiness.checks } };
}

/**
 * HEALTH_PORT: /health/live and /health/ready of any node on a port of its own, for nodes that
 * serve no HTTP (users, chat, notifications), so a container's healthcheck or an orchestrator's
 * probe can ask them too. Binds 0.0.0.0 like the gateway; it tells nothing secret.
 */
export function startHealthServer(broker: ServiceBroker, port: number): import("node:http").Server {
	const http = require("node:http") as typeof import("node:http");
	const server = http.createServer((req, res) => {
		const send = (status: number, body: unknown) => {
			res.writeHead(status, { "Content-Type": "application/json", "Cache-Control": "no-store" });
			res.end(JSON.stringify(body));
		};
		const path = (req.url ?? "/").split("?")[0];
		if (req.method !== "GET" && req.method !== "HEAD") return send(405, { code: "METHOD_NOT_ALLOWED", message: "GET only" });
		if (path === "/health/live") return send(200, { status: "ok", node: broker.nodeID });
		if (path === "/health/ready") {
			return void readinessReport(broker).then(
				({ ready, body }) => send(ready ? 200 : 503, body),
				err => send(503, { status: "unavailable", node: broker.nodeID, failing: ["readiness"], checks: { readiness: (err as Error).message } }),
			);
		}
		send(404, { code: "NOT_FOUND", message: "GET /health/live or /health/ready" });
	});
	server.listen(port);
	server.unref();
	return server;
}
