/**
 * api: the gateway. REST through moleculer-web and Socket.IO through moleculer-io on the same
 * HTTP server. It only routes: every REST route and socket event is an action's declaration
 * (`rest`, `socket`, lib/api-declarations.ts) found in the service registry (GatewayRoutesMixin),
 * and who may call an action is checked where the action runs (middlewares/authorize.middleware.ts).
 * What a route goes through is one of the chains below, each made of the gateway mixins:
 *
 * - GatewayHttpMixin: trace ids, security headers, CORS, JSON bodies, the error envelope;
 * - GatewayAuthMixin: the access token before the body, the refresh-token cookie;
 * - GatewayLimitsMixin: rate limits and large-body slots;
 * - GatewayUploadsMixin: multipart uploads streamed to the files service;
 * - GatewayDocsMixin: /docs, /docs/asyncapi and the two generated documents;
 * - GatewaySocketsMixin: the namespaces /chat and /notifications, socket sessions, pushes, presence.
 *
 * Nothing else is reachable: moleculer-io's default namespace "/" is refused, and the mixins' own
 * actions (broadcast, getClients, listAliases, …) are callable on this node only.
 */
import path from "node:path";
import type { Context, ServiceSchema, ServiceSettingSchema } from "moleculer";
import ApiGateway from "moleculer-web";
import { ok, schema } from "../lib/api-schemas";
import { config } from "../lib/config";
import { readinessReport } from "../lib/readiness";
import type { CallMeta } from "../lib/meta";
import { GatewayAuthMixin, authRouteHooks, requireToken } from "../mixins/gateway-auth.mixin";
import { GatewayDocsMixin, docsAliases, swaggerUiFiles } from "../mixins/gateway-docs.mixin";
import { GatewayHttpMixin, type GatewayHttpThis, type GatewayRequest, MiB, jsonBody, passCallMeta } from "../mixins/gateway-http.mixin";
import { GatewayLimitsMixin, authRateLimit, largeBodySlot } from "../mixins/gateway-limits.mixin";
import { GatewayRoutesMixin } from "../mixins/gateway-routes.mixin";
import { GatewaySocketsMixin } from "../mixins/gateway-sockets.mixin";
import { GatewayUploadsMixin, uploadAliases } from "../mixins/gateway-uploads.mixin";

/**
 * The route chains. Declared routes land in the route their action's `gatewayRoute` names
 * (ROUTE_OF_KIND in mixins/gateway-routes.mixin.ts); `aliases` here are the function routes only.
 */
const routes = [
	{
		// No token, no body: health, the documents and their pages.
		name: "public",
		path: "/",
		mappingPolicy: "restrict",
		authentication: false,
		authorization: false,
		bodyParsers: false,
		aliases: docsAliases,
	},
	{
		name: "docs-assets",
		path: "/docs/ui",
		mappingPolicy: "restrict",
		authentication: false,
		bodyParsers: false,
		use: [swaggerUiFiles],
		aliases: {},
	},
	{
		name: "files",
		path: "/files",
		mappingPolicy: "restrict",
		// No token: the unguessable file id is the capability, so <img src> works.
		authentication: false,
		authorization: false,
		bodyParsers: false,
		aliases: {},
		onBeforeCall(this: GatewayHttpThis, ctx: Context<unknown, CallMeta & { range?: string }>, _route: unknown, req: GatewayRequest) {
			this.setCallMeta(ctx, req);
			const range = req.headers.range;
			if (typeof range === "string") ctx.meta.range = range.slice(0, 100);
		},
	},
	{
		name: "upload",
		path: "/upload",
		mappingPolicy: "restrict",
		authentication: true,
		authorization: true,
		// Multipart bodies are streamed to the files service, never parsed here.
		bodyParsers: false,
		use: [requireToken],
		aliases: uploadAliases,
		onBeforeCall: passCallMeta,
	},
	{
		name: "base64-uploads",
		path: "/",
		mappingPolicy: "restrict",
		authentication: true,
		authorization: true,
		// A 25 MiB file is ~35 MiB of base64: read only for a valid token, a few at a time.
		bodyParsers: false,
		use: [requireToken, largeBodySlot, jsonBody(35 * MiB)],
		aliases: {},
		onBeforeCall: passCallMeta,
	},
	{
		name: "auth",
		path: "/auth",
		mappingPolicy: "restrict",
		authentication: false,
		authorization: false,
		bodyParsers: false,
		use: [authRateLimit, jsonBody(MiB)],
		aliases: {},
		...authRouteHooks,
	},
	{
		name: "rest",
		path: "/",
		mappingPolicy: "restrict",
		authentication: true,
		authorization: true,
		bodyParsers: false,
		use: [requireToken, jsonBody(MiB)],
		aliases: {},
		onBeforeCall: passCallMeta,
	},
];

const ApiService: ServiceSchema<ServiceSettingSchema> = {
	name: "api",
	// The first mixin wins where two define the same method: ours come before moleculer-web's
	// (sendError, authenticate, authorize override its own).
	mixins: [
		GatewayHttpMixin,
		GatewayAuthMixin,
		GatewayLimitsMixin,
		GatewayUploadsMixin,
		GatewayDocsMixin,
		GatewayRoutesMixin,
		ApiGateway as Partial<ServiceSchema>,
		GatewaySocketsMixin,
	],

	settings: {
		port: config.port,
		ip: process.env.HOST || "0.0.0.0",

		// The web client (public/) for every path no route claims. The page and its code are
		// revalidated on every load, so a new version reaches a user at once.
		assets: {
			folder: path.join(__dirname, "..", "public"),
			options: {
				index: "index.html",
				maxAge: "1h",
				setHeaders(res: import("node:http").ServerResponse, file: string) {
					if (/\.(html|js|css)$/.test(file)) res.setHeader("Cache-Control", "no-cache");
				},
			},
		},

		routes,
	},

	actions: {
		health: {
			rest: "GET /health",
			gatewayRoute: "public",
			auth: false,
			openapi: {
				operationId: "getHealth",
				tag: "Health",
				summary: "Liveness and readiness of this gateway node",
				description: "200 once this node's services have started; 503 with `status: \"starting\"` before that. Not rate-limited; needs no token.",
				responses: {
					200: ok("The node is up.", schema("Health")),
					503: ok("The node is still starting.", schema("Health")),
				},
			},
			handler(ctx: Context<unknown, CallMeta>) {
				const local = this.broker.services.map(s => s.name).filter(n => !n.startsWith("$"));
				const cluster = (this.broker.registry.getServiceList({ onlyAvailable: true, skipInternal: true }) as { name: string }[]).map(s => s.name);
				const ready = this.broker.started;
				if (!ready) ctx.meta.$statusCode = 503;
				return {
					status: ready ? "ok" : "starting",
					node: this.broker.nodeID,
					services: local,
					cluster: [...new Set(cluster)].sort(),
				};
			},
		},
		live: {
			rest: "GET /health/live",
			gatewayRoute: "public",
			auth: false,
			openapi: {
				operationId: "getLiveness",
				tag: "Health",
				summary: "Liveness: the process is up and answering",
				description: "Always 200 while the process runs; for a restart policy. Checks nothing else.",
				responses: { 200: ok("The process is up.", schema("Liveness")) },
			},
			handler() {
				return { status: "ok", node: this.broker.nodeID };
			},
		},
		ready: {
			rest: "GET /health/ready",
			gatewayRoute: "public",
			auth: false,
			openapi: {
				operationId: "getReadiness",
				tag: "Health",
				summary: "Readiness: this node's services have started and its dependencies answer",
				description:
					"Checks, each within 2 s: this node's services started (`services`), the transporter (`transporter`, in a cluster), " +
					"Redis (`redis`, when it is the cache), PostgreSQL (`postgresql`) and MongoDB (`mongodb`) when a service of this node uses them. " +
					"503 with the failing ones named in `failing`; for a load balancer's health check.",
				responses: {
					200: ok("Ready.", schema("Readiness")),
					503: ok("Not ready: `failing` names what does not answer.", schema("Readiness")),
				},
			},
			async handler(ctx: Context<unknown, CallMeta>) {
				const { ready, body } = await readinessReport(this.broker);
				if (!ready) ctx.meta.$statusCode = 503;
				return body;
			},
		},
		// moleculer-web's own actions: for this node's code (and the REPL), never for another node.
		listAliases: { visibility: "protected" },
		addRoute: { visibility: "protected" },
		removeRoute: { visibility: "protected" },
	},
};

export default ApiService;
