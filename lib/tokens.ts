/**
 * Access tokens (JWT, HS256) and refresh tokens (opaque, stored only as a SHA-256 hash).
 *
 * An access token names its login (`sid`, the refresh token family) and the account's token
 * version at issue time (`ver`). Logout revokes one `sid`; a password or role change raises the
 * version, which revokes every older token of the account; deleting the account revokes all.
 * The gateway keeps those revocations in memory (lib/session-revocations.ts).
 */
import crypto from "node:crypto";
import jwt from "jsonwebtoken";
import { config, jwtSecret } from "./config";

/** What travels in ctx.meta.user: small, because it crosses the transporter on every call. */
export interface AuthUser {
	id: number;
	username: string;
	roles: string[];
}

export interface AccessTokenClaims {
	sub: string;
	username: string;
	roles: string[];
	/** The login (refresh token family) this token belongs to. */
	sid?: string;
	/** The account's token version when the token was issued. */
	ver?: number;
	iat: number;
	exp: number;
}

/** A verified access token: the user, and what the gateway needs to end its session. */
export interface AccessSession {
	user: AuthUser;
	sid: string | null;
	ver: number;
	/** Seconds since the epoch, as in the token. */
	iat: number;
	exp: number;
}

export function signAccessToken(user: AuthUser, session: { sid?: string; ver?: number } = {}): string {
	const claims: Record<string, unknown> = { username: user.username, roles: user.roles };
	if (session.sid) claims.sid = session.sid;
	if (session.ver !== undefined) claims.ver = session.ver;
	return jwt.sign(claims, jwtSecret(), {
		algorithm: "HS256",
		subject: String(user.id),
		expiresIn: config.accessTokenTtlSeconds,
	});
}

/**
 * Verify an access token; null when it is missing, malformed, expired, signed with another
 * secret or with another algorithm (only HS256 is accepted, so `alg: none` is refused).
 */
export function verifyAccessSession(token: string | null | undefined): AccessSession | null {
	if (!token) return null;
	const secret = jwtSecret();
	if (secret !== verifiedWith) {
		verified.clear();
		verifiedWith = secret;
	}
	// The same token string verified before (a client sends its token with every request): only
	// its expiry can have changed. Revocation is checked by the callers, every time.
	const known = verified.get(token);
	if (known) {
		if (known.exp * 1000 > Date.now()) return known;
		verified.delete(token);
		return null;
	}
	const session = verifyUncached(token, secret);
	if (session) {
		if (verified.size >= MAX_VERIFIED) verified.delete(verified.keys().next().value as string);
		verified.set(token, session);
	}
	return session;
}

/**
 * Tokens verified lately, by their exact string, with what they said: jsonwebtoken's verify was
 * ~15 % of the CPU of an authenticated request. Frozen: every request of the token shares it.
 */
const verified = new Map<string, AccessSession>();
const MAX_VERIFIED = 10_000;
let verifiedWith: crypto.KeyObject | null = null;

function verifyUncached(token: string, secret: crypto.KeyObject): AccessSession | null {
	try {
		const claims = jwt.verify(token, secret, { algorithms: ["HS256"] }) as Partial<AccessTokenClaims>;
		const id = Number(claims.sub);
		if (!Number.isSafeInteger(id) || id <= 0 || typeof claims.username !== "string" || !Array.isArray(claims.roles)) return null;
		if (typeof claims.exp !== "number" || typeof claims.iat !== "number") return null;
		const roles = Object.freeze(claims.roles.filter((r): r is string => typeof r === "string")) as string[];
		return Object.freeze({
			user: Object.freeze({ id, username: claims.username, roles }),
			sid: typeof claims.sid === "string" ? claims.sid : null,
			ver: Number.isSafeInteger(claims.ver) ? (claims.ver as number) : 0,
			iat: claims.iat,
			exp: claims.exp,
		});
	} catch {
		return null;
	}
}

/** Accepts "Bearer <jwt>" or the raw JWT. */
export function extractBearer(value: unknown): string | null {
	if (typeof value !== "string") return null;
	const trimmed = value.trim();
	if (!trimmed) return null;
	const match = /^Bearer\s+(.+)$/i.exec(trimmed);
	return match ? match[1].trim() : trimmed;
}

export function newRefreshToken(): string {
	return crypto.randomBytes(32).toString("base64url");
}

export function hashRefreshToken(token: string): string {
	return crypto.createHash("sha256").update(token).digest("hex");
}
