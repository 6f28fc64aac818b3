/** What the gateway puts in ctx.meta for every call (kept small: it crosses the transporter). */
import type { AuthUser } from "./tokens";

export interface CallMeta {
	user?: AuthUser | null;
	/** The request's X-Trace-Id, also the context's requestID. */
	traceId?: string;
	clientIp?: string;
	userAgent?: string;
	/** Only on /auth routes: the refresh token cookie. */
	refreshCookie?: string;
	/** Only on POST /auth/logout with a valid bearer token: the login that token belongs to. */
	session?: { userId: number; sid: string | null };
	$statusCode?: number;
	$location?: string;
	$responseType?: string;
	$responseHeaders?: Record<string, string | string[]>;
}
