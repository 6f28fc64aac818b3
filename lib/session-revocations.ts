/**
 * Sessions that ended before their access tokens expire: logout, a spent refresh token presented
 * again, a password or role change, a deleted account. The users service records each one and
 * broadcasts it to every gateway node; a gateway keeps them in memory until every token they
 * cover has expired (at most ACCESS_TOKEN_TTL), so checking a token costs a map lookup, not a
 * database round trip.
 */
import type { AccessSession } from "./tokens";

export type RevocationReason = "logout" | "token_reuse" | "password_changed" | "roles_changed" | "account_deleted";

export interface SessionRevocation {
	userId: number;
	reason: RevocationReason;
	/** One login ended: tokens with this sid (logout, refresh token reuse). */
	sid?: string;
	/** Tokens of the user with a lower `ver` (password change, role change). */
	minVersion?: number;
	/** Every token of the user (account deleted). */
	all?: boolean;
	/** Epoch ms after which every token this covers has expired, so it can be forgotten. */
	until: number;
}

interface UserEntry {
	minVersion: number;
	all: boolean;
	until: number;
}

export class RevocationList {
	private readonly sessions = new Map<string, number>();
	private readonly users = new Map<number, UserEntry>();

	constructor(private readonly now: () => number = Date.now) {}

	add(r: SessionRevocation): void {
		if (r.until <= this.now()) return;
		if (r.sid) this.sessions.set(r.sid, Math.max(r.until, this.sessions.get(r.sid) ?? 0));
		if (r.all || r.minVersion !== undefined) {
			const prev = this.users.get(r.userId) ?? { minVersion: 0, all: false, until: 0 };
			this.users.set(r.userId, {
				minVersion: Math.max(prev.minVersion, r.minVersion ?? 0),
				all: prev.all || !!r.all,
				until: Math.max(prev.until, r.until),
			});
		}
	}

	/** Is this verified token's session over? */
	isRevoked(session: Pick<AccessSession, "user" | "sid" | "ver">): boolean {
		const user = this.users.get(session.user.id);
		if (user && (user.all || session.ver < user.minVersion)) return true;
		return session.sid !== null && this.sessions.has(session.sid);
	}

	/** Forget what no unexpired token can match any more. */
	sweep(): void {
		const now = this.now();
		for (const [sid, until] of this.sessions) if (until <= now) this.sessions.delete(sid);
		for (const [id, entry] of this.users) if (entry.until <= now) this.users.delete(id);
	}

	get size(): number {
		return this.sessions.size + this.users.size;
	}
}
