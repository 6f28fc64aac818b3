/**
 * Run real nodes as separate processes, the way an operator does (`npm start` with env).
 */
import { type ChildProcess, spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import path from "node:path";
import { NODE_FLAGS } from "../../lib/node-flags";
import { http, waitFor } from "./system";

const ROOT = path.resolve(__dirname, "..", "..");

export function freePort(): Promise<number> {
	return new Promise((resolve, reject) => {
		const srv = net.createServer();
		srv.once("error", reject);
		srv.listen(0, "127.0.0.1", () => {
			const { port } = srv.address() as net.AddressInfo;
			srv.close(() => resolve(port));
		});
	});
}

/** The variables a node reads; the test's own are not inherited, so a node gets only what it is given. */
const NODE_VARIABLES = ["PORT", "SERVICES", "TRANSPORTER", "DATABASE_URL", "MONGO_URL", "REDIS_URL", "DATA_DIR", "JWT_SECRET", "NAMESPACE", "CORS_ORIGINS", "RATE_LIMIT", "RATE_LIMIT_AUTH", "ADMIN_EMAIL", "ADMIN_PASSWORD", "ADMIN_USERNAME", "BCRYPT_ROUNDS", "NODE_ENV", "METRICS_PORT", "TRACING_EXPORTER", "HEALTH_PORT", "PRESENCE_AWAY_SECONDS"];

export interface NodeProcess {
	child: ChildProcess;
	logFile: string;
	exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
	stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
	log(): string;
}

export function startNode(env: Record<string, string>, logDir: string, name: string): NodeProcess {
	const base: Record<string, string> = {};
	for (const [k, v] of Object.entries(process.env)) if (v !== undefined && !NODE_VARIABLES.includes(k)) base[k] = v;
	const logFile = path.join(logDir, `${name}.log`);
	const out = fs.openSync(logFile, "a");
	const child = spawn(process.execPath, [...NODE_FLAGS, "--import", "tsx", "bin/runner.ts", "--config", "moleculer.config.ts"], {
		cwd: ROOT,
		env: { ...base, LOG_LEVEL: "info", ...env },
		stdio: ["ignore", out, out],
	});
	fs.closeSync(out);
	const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>(resolve => child.once("exit", (code, signal) => resolve({ code, signal })));
	return {
		child,
		logFile,
		exited,
		log: () => fs.readFileSync(logFile, "utf8"),
		async stop(signal: NodeJS.Signals = "SIGTERM") {
			if (child.exitCode === null && child.signalCode === null) child.kill(signal);
			const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
			const result = await exited;
			clearTimeout(timer);
			return result;
		},
	};
}

/** Wait until the gateway's /health is 200 and lists the wanted services in the cluster. */
export async function waitForHealth(baseUrl: string, services: string[] = [], timeoutMs = 60_000) {
	return waitFor(async () => {
		const res = await http(baseUrl, "GET", "/health");
		if (res.status !== 200) return null;
		return services.every(s => res.body.cluster.includes(s)) ? res.body : null;
	}, timeoutMs, 250);
}
