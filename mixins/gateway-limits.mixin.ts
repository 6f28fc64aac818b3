/**
 * The gateway's limits, per node: requests a second per user (authenticated routes, checked by
 * GatewayAuthMixin's authorize once the route is known, after a JSON body of at most 1 MiB is
 * read) and per client address (/auth, before the body), and how many large bodies (base64
 * uploads) are read at once, in all and per user (before the body).
 */
import type { ServerResponse } from "node:http";
import type { Service, ServiceSchema } from "moleculer";
import { config } from "../lib/config";
import { appError, rateLimited } from "../lib/errors";
import { countMetric } from "../lib/metrics";
import { type Limiter, createLimiter } from "../lib/rate-limiter";
import { type GatewayHttpThis, type GatewayRequest, type Next, refuseEarly } from "./gateway-http.mixin";

/** Large bodies (base64 uploads) one user may send at once on a node. */
const LARGE_BODIES_PER_USER = 2;

export interface GatewayLimitsThis extends Service, GatewayHttpThis {
	userLimiter: Limiter;
	authLimiter: Limiter;
	/** Large bodies being read on this node: in all, and per user. */
	largeBodies: { total: number; byUser: Map<number, number> };
}

type Middleware = (this: GatewayLimitsThis, req: GatewayRequest, res: ServerResponse, next: Next) => void;

/**
 * Large bodies (a 25 MiB file is 35 MiB of base64, parsed whole) are read a few at a time per
 * node and per user, so a flood cannot take the node's memory; the rest are told to retry.
 */
export const largeBodySlot: Middleware = function (req, res, next) {
	if (req.method === "OPTIONS") return next();
	const userId = req.$session?.user.id ?? 0;
	const slots = this.largeBodies;
	const mine = slots.byUser.get(userId) ?? 0;
	if (mine >= LARGE_BODIES_PER_USER) return refuseEarly(req, res, next, rateLimited(1));
	if (slots.total >= config.largeBodiesInFlight) {
		return refuseEarly(req, res, next, appError("SERVICE_UNAVAILABLE", "Too many uploads in progress, try again in a moment", { retryAfter: 1 }));
	}
	slots.total++;
	slots.byUser.set(userId, mine + 1);
	res.once("close", () => {
		slots.total--;
		const left = (slots.byUser.get(userId) ?? 1) - 1;
		if (left > 0) slots.byUser.set(userId, left);
		else slots.byUser.delete(userId);
	});
	next();
};

/** The unauthenticated /auth routes: the per-address limit comes before the body is read. */
export const authRateLimit: Middleware = function (req, res, next) {
	if (req.method === "OPTIONS") return next();
	void Promise.resolve(this.authLimiter.take(this.clientIp(req))).then(
		limit => {
			if (limit.ok) return next();
			countMetric(this.broker, "parley_rate_limit_rejections_total", 1, { limit: "auth" });
			refuseEarly(req, res, next, rateLimited(limit.retryAfter));
		},
		err => next(err),
	);
};

export const GatewayLimitsMixin = {
	created(this: GatewayLimitsThis) {
		// With REDIS_URL every gateway counts in Redis: the limits hold across the cluster.
		this.userLimiter = createLimiter("user", config.rateLimit, config.redisUrl, config.namespace);
		this.authLimiter = createLimiter("auth", config.rateLimitAuth, config.redisUrl, config.namespace);
		this.largeBodies = { total: 0, byUser: new Map() };
	},

	stopped(this: GatewayLimitsThis) {
		this.userLimiter.stop();
		this.authLimiter.stop();
	},
} as unknown as Partial<ServiceSchema>;
