/**
 * Authentication at the gateway: the access token of authenticated routes is checked before the
 * body is read (a revoked login is refused like an expired one), and the /auth routes' refresh
 * token travels in an HttpOnly cookie. Who may call which action is not decided here but where
 * the action runs (middlewares/authorize.middleware.ts), for every caller alike.
 */
import type { ServerResponse } from "node:http";
import type { Context, Service, ServiceSchema } from "moleculer";
import { config } from "../lib/config";
import { rateLimited, unauthorized } from "../lib/errors";
import type { CallMeta } from "../lib/meta";
import { countMetric } from "../lib/metrics";
import { type AuthUser, extractBearer, verifyAccessSession } from "../lib/tokens";
import type { GatewayHttpThis, GatewayRequest, Next } from "./gateway-http.mixin";
import { refuseEarly } from "./gateway-http.mixin";
import type { GatewayLimitsThis } from "./gateway-limits.mixin";
import type { SocketSessionsThis } from "./socket-sessions.mixin";

const REFRESH_COOKIE = "refreshToken";

/** The revocation list is the socket sessions' (one per node, for REST and sockets alike). */
type AuthThis = Service & GatewayHttpThis & GatewayLimitsThis & Pick<SocketSessionsThis, "revocations">;

function parseCookies(header: string | undefined): Record<string, string> {
	const out: Record<string, string> = {};
	if (!header) return out;
	for (const part of header.split(";")) {
		const eq = part.indexOf("=");
		if (eq < 0) continue;
		const key = part.slice(0, eq).trim();
		const value = part.slice(eq + 1).trim();
		try {
			out[key] = decodeURIComponent(value);
		} catch {
			out[key] = value;
		}
	}
	return out;
}

function refreshCookie(token: string | null, secure: boolean): string {
	const parts = [
		`${REFRESH_COOKIE}=${token ? encodeURIComponent(token) : ""}`,
		"Path=/auth",
		"HttpOnly",
		"SameSite=Lax",
		token ? `Max-Age=${config.refreshTokenTtlSeconds}` : "Max-Age=0",
	];
	if (secure) parts.push("Secure");
	return parts.join("; ");
}

/** Authenticated routes: the token is checked first, so an anonymous body is never read or parsed. */
export function requireToken(this: AuthThis, req: GatewayRequest, res: ServerResponse, next: Next) {
	// A CORS preflight carries no token; moleculer-web answers it after the route's middlewares.
	if (req.method === "OPTIONS") return next();
	const token = extractBearer(req.headers.authorization);
	if (!token) return refuseEarly(req, res, next, unauthorized("Missing bearer token"));
	const session = verifyAccessSession(token);
	if (!session) return refuseEarly(req, res, next, unauthorized("Invalid or expired token"));
	if (this.revocations.isRevoked(session)) return refuseEarly(req, res, next, unauthorized("This session has ended"));
	req.$session = session;
	next();
}

/** The /auth route's hooks: the refresh-token cookie in, and out again with new tokens. */
export const authRouteHooks = {
	onBeforeCall(this: AuthThis, ctx: Context<unknown, CallMeta>, _route: unknown, req: GatewayRequest) {
		this.setCallMeta(ctx, req);
		const cookie = parseCookies(req.headers.cookie)[REFRESH_COOKIE];
		if (cookie) ctx.meta.refreshCookie = cookie;
		// Logout with only an access token still ends that login.
		if (req.$action?.name === "users.logout") {
			const session = verifyAccessSession(extractBearer(req.headers.authorization));
			if (session) ctx.meta.session = { userId: session.user.id, sid: session.sid };
		}
	},
	onAfterCall(this: AuthThis, _ctx: Context<unknown, CallMeta>, _route: unknown, req: GatewayRequest, res: ServerResponse, data: unknown) {
		const secure = this.isSecureRequest(req) || process.env.NODE_ENV === "production";
		const issued = (data as { refreshToken?: string } | null)?.refreshToken;
		if (issued) {
			res.setHeader("Set-Cookie", refreshCookie(issued, secure));
			// A client that asks for it gets the refresh token in the HttpOnly cookie only,
			// out of reach of any script on its page.
			if (String(req.headers["x-refresh-transport"] ?? "").toLowerCase() === "cookie") {
				const { refreshToken: _dropped, ...rest } = data as Record<string, unknown>;
				return rest;
			}
		} else if (req.$action?.name === "users.logout") res.setHeader("Set-Cookie", refreshCookie(null, secure));
		return data;
	},
};

export const GatewayAuthMixin = {
	methods: {
		/** The user of an authenticated route: its token was checked (and refused with 401) by requireToken. */
		async authenticate(this: AuthThis, _ctx: Context, _route: unknown, req: GatewayRequest): Promise<AuthUser> {
			if (!req.$session) throw unauthorized();
			return req.$session.user;
		},

		/**
		 * The per-user rate limit of authenticated routes. Roles, ownership and membership are the
		 * actions' own declarations, checked where they run.
		 */
		async authorize(this: AuthThis, ctx: Context<unknown, CallMeta>) {
			const user = ctx.meta.user;
			if (!user) throw unauthorized();
			const limit = await this.userLimiter.take(`u:${user.id}`);
			if (!limit.ok) {
				countMetric(this.broker, "parley_rate_limit_rejections_total", 1, { limit: "user" });
				throw rateLimited(limit.retryAfter);
			}
		},
	},
} as unknown as Partial<ServiceSchema>;
