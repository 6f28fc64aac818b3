/**
 * Access tokens (JWT, HS256) and refresh tokens (opaque, stored only as a SHA-256 hash).
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
	iat: number;
	exp: number;
}

export function signAccessToken(user: AuthUser): string {
	return jwt.sign({ username: user.username, roles: user.roles }, jwtSecret(), {
		algorithm: "HS256",
		subject: String(user.id),
		expiresIn: config.accessTokenTtlSeconds,
	});
}

/**
 * Verify an access token; null when it is missing, malformed, expired, signed with another
 * secret or with another algorithm (only HS256 is accepted, so `alg: none` is refused).
 */
export function verifyAccessToken(token: string | null | undefined): AuthUser | null {
	if (!token) return null;
	try {
		const claims = jwt.verify(token, jwtSecret(), { algorithms: ["HS256"] }) as Partial<AccessTokenClaims>;
		const id = Number(claims.sub);
		if (!Number.isSafeInteger(id) || id <= 0 || typeof claims.username !== "string" || !Array.isArray(claims.roles)) return null;
		return { id, username: claims.username, roles: claims.roles.filter((r): r is string => typeof r === "string") };
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
