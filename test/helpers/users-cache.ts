/**
 * For the profile cache tests: the cacher a node gets from moleculer.config.ts, and a count of
 * the SQL statements a users service sends (its Sequelize instance's query is wrapped here, in
 * the test, so production code carries no test hook).
 */
import type { BrokerOptions, ServiceBroker } from "moleculer";
import type { Sequelize } from "sequelize";
import { cacher } from "../../moleculer.config";

export const TEST_REDIS_URL = process.env.TEST_REDIS_URL || "";
export const skipWithoutRedis = TEST_REDIS_URL ? false : "TEST_REDIS_URL is not set: Redis cacher case skipped";

export type CacheKind = "memory" | "redis";

/**
 * The cacher of moleculer.config.ts, with REDIS_URL unset (memory) or set to TEST_REDIS_URL (redis).
 * `prefix`: keys of their own, for a test whose users ids could meet another test's in a shared Redis.
 */
export function nodeCacher(kind: CacheKind, prefix?: string): BrokerOptions["cacher"] {
	const saved = process.env.REDIS_URL;
	if (kind === "redis") process.env.REDIS_URL = TEST_REDIS_URL;
	else delete process.env.REDIS_URL;
	try {
		const chosen = cacher() as { type: string; options: Record<string, unknown> };
		return prefix ? { ...chosen, options: { ...chosen.options, prefix } } : chosen;
	} finally {
		if (saved === undefined) delete process.env.REDIS_URL;
		else process.env.REDIS_URL = saved;
	}
}

export interface SqlStatement {
	sql: string;
	replacements: unknown;
}

export interface SqlCounter {
	readonly count: number;
	readonly statements: SqlStatement[];
	reset(): void;
	/** The next statement matching `pattern` runs, then its answer is held until release(). */
	holdNext(pattern: RegExp): { reached: Promise<void>; release(): void };
	describe(): string;
}

const BACKGROUND_SYNC = /^\s*SELECT [^;]* FROM session_revocations\s+WHERE created_at > now\(\)/;

/** Every statement (transactions' BEGIN/COMMIT too) the users service of this broker sends, but the gateways' timed revocation sync. */
export function countUsersSql(broker: ServiceBroker): SqlCounter {
	const svc = broker.getLocalService("users") as unknown as { sequelize: Sequelize } | undefined;
	if (!svc?.sequelize) throw new Error(`no started users service on ${broker.nodeID}`);
	const sequelize = svc.sequelize as unknown as { query: (sql: unknown, options?: { replacements?: unknown }) => Promise<unknown> };
	const original = sequelize.query.bind(sequelize);
	const statements: SqlStatement[] = [];
	const holds: { pattern: RegExp; reached: () => void; released: Promise<void> }[] = [];
	sequelize.query = async (sql, options) => {
		const text = typeof sql === "string" ? sql : String((sql as { query?: string })?.query ?? sql);
		// The gateways' once-a-minute users.revocations sync runs on its own clock, not on the request under test.
		if (BACKGROUND_SYNC.test(text)) return original(sql, options);
		statements.push({ sql: text.replace(/\s+/g, " ").trim(), replacements: options?.replacements });
		const answer = await original(sql, options);
		const hold = holds.findIndex(h => h.pattern.test(text));
		if (hold >= 0) {
			const [h] = holds.splice(hold, 1);
			h.reached();
			await h.released;
		}
		return answer;
	};
	return {
		get count() {
			return statements.length;
		},
		statements,
		reset() {
			statements.length = 0;
		},
		holdNext(pattern) {
			let reached!: () => void;
			let release!: () => void;
			const reachedP = new Promise<void>(r => (reached = r));
			const released = new Promise<void>(r => (release = r));
			holds.push({ pattern, reached, released });
			return { reached: reachedP, release };
		},
		describe() {
			return statements.map(s => `${s.sql.slice(0, 160)} ${JSON.stringify(s.replacements ?? null)}`).join("\n");
		},
	};
}
