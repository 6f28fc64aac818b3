/**
 * Start the real gateway (and whichever services a test wants) in this process, on a free
 * port, and talk to it over HTTP as a client would.
 */
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import type { AddressInfo } from "node:net";
import { ServiceBroker, type BrokerOptions, type Middleware, type ServiceSchema } from "moleculer";
import { createChannelsMiddleware } from "../../lib/durable-events";
import { AuthorizeMiddleware } from "../../middlewares/authorize.middleware";
import { checkHttpAnswer } from "./api-contract";
import { Client } from "pg";

export const TEST_DATABASE_URL = process.env.TEST_DATABASE_URL || "";
export const TEST_AMQP_URL = process.env.TEST_AMQP_URL || "";

/** Why a real-server suite skips, printed in the test output; null when it runs. */
export const skipWithoutPostgres = TEST_DATABASE_URL ? false : "TEST_DATABASE_URL is not set: PostgreSQL suite skipped (.ci/run sets it)";
export const skipWithoutAmqp = TEST_AMQP_URL ? false : "TEST_AMQP_URL is not set: RabbitMQ suite skipped (.ci/run sets it)";

export function tempDir(prefix = "parley-test-"): string {
	return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** A MongoDB URL on the test server with a database of its own (for one file's nodes). */
export function mongoUrlForTest(base: string): string {
	const url = new URL(base);
	url.pathname = `/parley_t_${process.pid}_${Math.random().toString(36).slice(2, 8)}`;
	return url.toString();
}

/** A fresh PostgreSQL database on the test server; returns its URL and a drop function. */
export async function createTestDatabase(): Promise<{ url: string; drop: () => Promise<void> }> {
	const name = `parley_t_${process.pid}_${Math.random().toString(36).slice(2, 8)}`;
	const admin = new Client({ connectionString: TEST_DATABASE_URL });
	await admin.connect();
	await admin.query(`CREATE DATABASE ${name}`);
	await admin.end();
	const url = new URL(TEST_DATABASE_URL);
	url.pathname = `/${name}`;
	return {
		url: url.toString(),
		drop: async () => {
			const c = new Client({ connectionString: TEST_DATABASE_URL });
			await c.connect();
			await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
			await c.end();
		},
	};
}

/** Broker options for the nodes of one throwaway cluster over RabbitMQ (a namespace of its own). */
export function amqpCluster(prefix: string) {
	return {
		namespace: `${prefix}-${crypto.randomBytes(4).toString("hex")}`,
		transporter: { type: "AMQP", options: { url: TEST_AMQP_URL, socketOptions: { noDelay: true }, prefetch: 100, autoDeleteQueues: 60_000 } },
	};
}

/** What every test system starts with: this JWT secret, quick bcrypt, no rate limits, a fresh DATA_DIR. */
export function baseTestEnv(jwtSecret: string): void {
	process.env.JWT_SECRET = jwtSecret;
	process.env.BCRYPT_ROUNDS = "4";
	process.env.RATE_LIMIT = "0";
	process.env.RATE_LIMIT_AUTH = "0";
	process.env.DATA_DIR = tempDir();
}

/**
 * A one-node suite on the document store under test: baseTestEnv, users on the embedded
 * PostgreSQL, conversations and messages on MongoDB at mongoUrl or else on the embedded store.
 */
export function storeTestEnv(jwtSecret: string, mongoUrl: string | null | undefined): void {
	baseTestEnv(jwtSecret);
	delete process.env.DATABASE_URL;
	if (mongoUrl) process.env.MONGO_URL = mongoUrl;
	else delete process.env.MONGO_URL;
}

/**
 * The environment a cluster suite starts its brokers in: baseTestEnv and a fresh PostgreSQL
 * database for users. Returns the database's drop.
 */
export async function clusterTestEnv(jwtSecret: string): Promise<() => Promise<void>> {
	const db = await createTestDatabase();
	process.env.DATABASE_URL = db.url;
	baseTestEnv(jwtSecret);
	return db.drop;
}

export interface RunningSystem {
	broker: ServiceBroker;
	baseUrl: string;
	port: number;
	stop: () => Promise<void>;
}

/**
 * A broker with the given services. `api` listens on port 0; its address is in baseUrl.
 * Environment must be set by the caller before (services read it when they start).
 */
export async function startBroker(services: string[], brokerOptions: Partial<BrokerOptions> = {}): Promise<RunningSystem> {
	const broker = new ServiceBroker({
		logger: false,
		nodeID: `test-${services.join("-")}-${process.pid}-${Math.random().toString(36).slice(2, 6)}`,
		requestTimeout: 10_000,
		validator: true,
		tracking: { enabled: true, shutdownTimeout: 5_000 },
		// As in production (moleculer.config.ts): the caches and their invalidation are under test too.
		cacher: { type: "MemoryLRU", options: { max: 10_000, ttl: 600 } },
		...brokerOptions,
		middlewares: [AuthorizeMiddleware(), createChannelsMiddleware() as Middleware, ...((brokerOptions.middlewares as Middleware[] | undefined) ?? [])],
	});
	const gateways: { server?: import("node:http").Server }[] = [];
	for (const name of services) {
		const schema = (await import(`../../services/${name}.service`)).default as ServiceSchema;
		if (name === "api") {
			gateways.push(broker.createService({ name: "api", mixins: [schema], settings: { port: 0, ip: "127.0.0.1" } }) as unknown as (typeof gateways)[number]);
		} else {
			broker.createService(schema);
		}
	}
	await broker.start();
	let port = 0;
	const server = gateways[0]?.server;
	if (server) port = (server.address() as AddressInfo).port;
	return { broker, port, baseUrl: `http://127.0.0.1:${port}`, stop: () => broker.stop() };
}

/**
 * Wait until `observer` has seen every node of `others` (a broadcast from it reaches only the
 * nodes it knows, e.g. the gateways).
 */
export async function waitUntilKnown(observer: RunningSystem, others: RunningSystem[], timeoutMs = 30_000): Promise<void> {
	await waitFor(async () => {
		const registry = observer.broker.registry as unknown as { getNodeList(opts: object): { id: string }[] };
		const nodes = registry.getNodeList({ onlyAvailable: true, withServices: false }).map(n => n.id);
		return others.every(o => nodes.includes(o.broker.nodeID));
	}, timeoutMs);
}

export interface HttpResult<T = any> {
	status: number;
	headers: Headers;
	body: T;
	text: string;
}

/** fetch + JSON, never throws on an HTTP status. */
export async function http<T = any>(
	baseUrl: string,
	method: string,
	urlPath: string,
	options: { token?: string; body?: unknown; rawBody?: string | Buffer; headers?: Record<string, string> } = {},
): Promise<HttpResult<T>> {
	const headers: Record<string, string> = { ...(options.headers ?? {}) };
	if (options.token) headers.authorization = `Bearer ${options.token}`;
	let body: string | Buffer | undefined;
	if (options.rawBody !== undefined) body = options.rawBody;
	else if (options.body !== undefined) {
		body = JSON.stringify(options.body);
		headers["content-type"] ??= "application/json";
	}
	const res = await fetch(baseUrl + urlPath, { method, headers, body });
	const text = await res.text();
	let parsed: unknown = text;
	try {
		parsed = text ? JSON.parse(text) : null;
	} catch {
		// not JSON: leave the text
	}
	checkHttpAnswer(method, urlPath, res.status, res.headers.get("content-type"), parsed, headers);
	return { status: res.status, headers: res.headers, body: parsed as T, text };
}

let counter = 0;
/** A unique, valid username/email pair for this process. */
export function newIdentity(prefix = "user") {
	counter++;
	const tag = `${prefix}${process.pid % 10000}x${counter}${Math.random().toString(36).slice(2, 5)}`;
	return { username: tag.slice(0, 32), email: `${tag}@example.test`, password: "correct horse battery" };
}

export async function registerUser(baseUrl: string, prefix = "user") {
	const id = newIdentity(prefix);
	const res = await http(baseUrl, "POST", "/auth/register", { body: id });
	if (res.status !== 201) throw new Error(`register failed: ${res.status} ${res.text}`);
	return { ...id, id: res.body.user.id as number, accessToken: res.body.accessToken as string, refreshToken: res.body.refreshToken as string, res };
}

export function waitFor<T>(fn: () => Promise<T | undefined | null | false>, timeoutMs = 15_000, intervalMs = 100): Promise<T> {
	const deadline = Date.now() + timeoutMs;
	return new Promise((resolve, reject) => {
		const tick = async () => {
			try {
				const v = await fn();
				if (v) return resolve(v);
			} catch {
				// keep trying
			}
			if (Date.now() > deadline) return reject(new Error("waitFor: timed out"));
			setTimeout(tick, intervalMs);
		};
		void tick();
	});
}
