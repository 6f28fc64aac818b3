/**
 * bcrypt off the main thread. bcryptjs is plain JavaScript and runs a whole cost-10 hash (~70 ms)
 * in one go even through its "async" API, so on the main thread every login, register or password
 * change stalls every socket and request of the node for that long. Here the hashing runs in a
 * few worker threads; a WorkGate bounds how many wait, and past that a check is refused at once
 * (503 with Retry-After) instead of piling up.
 */
import os from "node:os";
import { Worker } from "node:worker_threads";
import { WorkGate } from "./work-gate";

type Job = { op: "hash"; password: string; rounds: number } | { op: "compare"; password: string; hash: string };

/** The worker: CommonJS, run from a string so it needs no build step and no loader of its own. */
const WORKER_SOURCE = `
const { parentPort, workerData } = require("node:worker_threads");
const bcrypt = require(workerData.bcryptPath);
parentPort.on("message", ({ id, job }) => {
	try {
		const result = job.op === "hash" ? bcrypt.hashSync(job.password, job.rounds) : bcrypt.compareSync(job.password, job.hash);
		parentPort.postMessage({ id, result });
	} catch (err) {
		parentPort.postMessage({ id, error: String(err && err.message || err) });
	}
});
`;

interface Pending {
	resolve(value: unknown): void;
	reject(err: Error): void;
}

class HashWorker {
	private readonly worker: Worker;
	private readonly pending = new Map<number, Pending>();
	private nextId = 1;

	constructor(onExit: (w: HashWorker) => void) {
		this.worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { bcryptPath: require.resolve("bcryptjs") } });
		// An idle pool does not keep a stopping process alive.
		this.worker.unref();
		this.worker.on("message", (msg: { id: number; result?: unknown; error?: string }) => {
			const p = this.pending.get(msg.id);
			if (!p) return;
			this.pending.delete(msg.id);
			if (msg.error !== undefined) p.reject(new Error(msg.error));
			else p.resolve(msg.result);
		});
		const fail = (err: Error) => {
			for (const p of this.pending.values()) p.reject(err);
			this.pending.clear();
			onExit(this);
		};
		this.worker.on("error", fail);
		this.worker.on("exit", code => fail(new Error(`password worker exited (${code})`)));
	}

	get busy(): number {
		return this.pending.size;
	}

	run(job: Job): Promise<unknown> {
		const id = this.nextId++;
		return new Promise((resolve, reject) => {
			this.pending.set(id, { resolve, reject });
			this.worker.postMessage({ id, job });
		});
	}

	terminate(): Promise<number> {
		return this.worker.terminate();
	}
}

export class PasswordHasher {
	private readonly workers: HashWorker[] = [];
	private readonly gate: WorkGate;

	/** `threads` workers (default: the cores but one, at least 1, at most 4); `waiting` checks in line at most. */
	constructor(
		private readonly threads = Math.min(4, Math.max(1, os.availableParallelism() - 1)),
		waiting = 32,
	) {
		this.gate = new WorkGate(threads, waiting);
	}

	hash(password: string, rounds: number): Promise<string> {
		return this.gate.run(() => this.worker().run({ op: "hash", password, rounds })) as Promise<string>;
	}

	compare(password: string, hash: string): Promise<boolean> {
		return this.gate.run(() => this.worker().run({ op: "compare", password, hash })) as Promise<boolean>;
	}

	get load() {
		return this.gate.load;
	}

	async close(): Promise<void> {
		const all = this.workers.splice(0);
		await Promise.all(all.map(w => w.terminate()));
	}

	/** The least busy worker; a new one while there are fewer than `threads` (started on first use). */
	private worker(): HashWorker {
		const idle = this.workers.find(w => w.busy === 0);
		if (idle) return idle;
		if (this.workers.length < this.threads) {
			const w = new HashWorker(dead => {
				const at = this.workers.indexOf(dead);
				if (at >= 0) this.workers.splice(at, 1);
			});
			this.workers.push(w);
			return w;
		}
		return this.workers.reduce((a, b) => (b.busy < a.busy ? b : a));
	}
}
