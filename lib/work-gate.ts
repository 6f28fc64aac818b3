/**
 * At most `running` jobs at once, at most `waiting` more in line; past that a job is refused at
 * once instead of queueing without bound. For CPU-heavy work on the main thread (bcrypt): a flood
 * of password checks then costs a bounded share of the node, and the rest are told to come back.
 */
import { appError } from "./errors";

export class WorkGate {
	private active = 0;
	private readonly queue: (() => void)[] = [];

	constructor(
		private readonly running: number,
		private readonly waiting: number,
	) {}

	async run<T>(job: () => Promise<T>): Promise<T> {
		if (this.active >= this.running) {
			if (this.queue.length >= this.waiting) throw appError("SERVICE_UNAVAILABLE", "Too many password checks in progress, try again in a moment", { retryAfter: 1 });
			await new Promise<void>(resolve => this.queue.push(resolve));
		} else {
			this.active++;
		}
		try {
			return await job();
		} finally {
			// The slot goes straight to the next in line, or is freed.
			const next = this.queue.shift();
			if (next) next();
			else this.active--;
		}
	}

	get load(): { active: number; waiting: number } {
		return { active: this.active, waiting: this.queue.length };
	}
}
