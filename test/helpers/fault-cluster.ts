/**
 * What the fault suite's clusters share: one throwaway cluster's environment (its own RabbitMQ
 * namespace, PostgreSQL database and MongoDB database), its cleanup, and a socket emit that never
 * throws (a missing ack is an answer too when nodes are being killed).
 */
import crypto from "node:crypto";
import { io, type Socket } from "socket.io-client";
import { removeNamespaceTopology } from "../../lib/durable-events";
import type { NodeProcess } from "./processes";
import { createTestDatabase, mongoUrlForTest, TEST_AMQP_URL } from "./system";

export type Ack = { ok: boolean; data?: any; error?: { code: string } };

export interface FaultCluster {
	namespace: string;
	/** The variables every node of the cluster gets. */
	env: Record<string, string>;
	/** Stops every node given (SIGTERM), drops the database and the namespace's queues. */
	teardown(nodes: NodeProcess[]): Promise<void>;
}

export async function faultCluster(prefix: string): Promise<FaultCluster> {
	const namespace = `${prefix}-${crypto.randomBytes(4).toString("hex")}`;
	const db = await createTestDatabase();
	const env: Record<string, string> = {
		TRANSPORTER: TEST_AMQP_URL,
		NAMESPACE: namespace,
		JWT_SECRET: crypto.randomBytes(24).toString("hex"),
		DATABASE_URL: db.url,
		BCRYPT_ROUNDS: "4",
		RATE_LIMIT: "0",
		RATE_LIMIT_AUTH: "0",
	};
	if (process.env.TEST_MONGO_URL) env.MONGO_URL = mongoUrlForTest(process.env.TEST_MONGO_URL);
	return {
		namespace,
		env,
		async teardown(nodes) {
			for (const node of nodes) await node.stop("SIGTERM");
			await db.drop();
			// The durable queues of this namespace would stay in RabbitMQ forever.
			await removeNamespaceTopology(TEST_AMQP_URL, namespace).catch(() => undefined);
		},
	};
}

/** A client's socket on /chat; with `reconnect` it connects again by itself, as the web client's does. */
export function faultSocket(base: string, token: string, reconnect: boolean): Promise<Socket> {
	return new Promise((resolve, reject) => {
		const socket = io(`${base}/chat`, { auth: { token }, transports: ["websocket"], reconnection: reconnect, reconnectionDelay: 200, forceNew: true });
		socket.once("connect", () => resolve(socket));
		socket.once("connect_error", reject);
	});
}

/** Emit with an ack; no ack within `timeoutMs` is answered `NO_ACK`. */
export function emitWithin(socket: Socket, event: string, payload: unknown, timeoutMs = 3_000): Promise<Ack> {
	return new Promise(resolve => {
		const timer = setTimeout(() => resolve({ ok: false, error: { code: "NO_ACK" } }), timeoutMs);
		socket.emit(event, payload, (ack: Ack) => {
			clearTimeout(timer);
			resolve(ack);
		});
	});
}

/**
 * A fault test's body that, when it fails, first prints each node's last warnings and errors: CI
 * keeps nothing but the test output, and a node's log usually says why.
 */
export function withNodeLogs(nodes: Record<string, NodeProcess>, body: () => Promise<void>): () => Promise<void> {
	return async () => {
		try {
			await body();
		} catch (err) {
			for (const [name, node] of Object.entries(nodes)) {
				let lines: string[] = [];
				try {
					lines = node.log().split("\n").filter(line => /\b(WARN|ERROR|FATAL)\b/.test(line)).slice(-15);
				} catch {
					// no log file: nothing to show
				}
				console.log(`--- ${name} (exit ${node.child.exitCode ?? node.child.signalCode ?? "running"}): last warnings and errors of ${node.logFile}`);
				for (const line of lines) console.log(`    ${line.slice(0, 400)}`);
			}
			throw err;
		}
	};
}
