/**
 * The gateway's routing table, made from the actions' declarations (lib/api-declarations.ts) as
 * they appear in the service registry, local or on any node: each `rest` becomes an alias of the
 * route its `gatewayRoute` names, each `socket` an event of its namespace, and both API
 * documents are made from the same declarations on demand.
 *
 * A route stays when its service goes away (all its nodes stopped or lost), and the routes of the
 * committed documents (docs/api/) are known before their services are met: a call then answers
 * 503 SERVICE_UNAVAILABLE, as an outage should, not 404 as if the route had never existed.
 * (moleculer-web's autoAliases drops such routes, and regenerates them after a delay.)
 */
import type { Service, ServiceSchema } from "moleculer";
import { type DeclaredAction, type GatewayRoute, type SocketDeclaration, type SocketNamespace, isClientAction, restRoutesOf } from "../lib/api-declarations";
import { buildAsyncApi, buildOpenApi, documentedRoutes, registryActions } from "../lib/api-documents";
import type { Obj } from "../lib/api-schemas";

/** The moleculer-web route (by name, in the gateway's settings) of each kind of declared route. */
export const ROUTE_OF_KIND: Record<GatewayRoute, string> = {
	rest: "rest",
	auth: "auth",
	"large-body": "base64-uploads",
	files: "files",
	public: "public",
};

interface WebRoute {
	name?: string;
	path: string;
	opts: { aliases?: Record<string, unknown> };
}

export interface DeclaredSocketEvent extends SocketDeclaration {
	action: string;
}

export interface GatewayRoutesThis extends Service {
	/** Every action with a declaration seen so far, by name. */
	declared: Map<string, DeclaredAction>;
	/** The routes and events of the committed documents, for services not met yet. */
	documented: DeclaredAction[];
	/** The socket events of each namespace, from the declarations. */
	socketEvents: Record<SocketNamespace, Map<string, DeclaredSocketEvent>>;
	/** The documents, made again after the next registry change. */
	apiDocuments: { openapi?: Obj; asyncapi?: Obj };
	/** Operations of the gateway's own function routes (uploads, docs pages), for the OpenAPI document. */
	gatewayPaths(): Record<string, Obj>;
	refreshDeclaredRoutes(force?: boolean): void;
	openApiDocument(): Obj;
	asyncApiDocument(): Obj;
	// moleculer-web's
	routes: WebRoute[];
	createRouteAliases(route: WebRoute, aliases: Record<string, unknown>): void;
	optimizeAliasesOrder(): void;
}

export const GatewayRoutesMixin = {
	events: {
		"$services.changed"(this: GatewayRoutesThis) {
			this.refreshDeclaredRoutes();
		},
	},

	methods: {
		refreshDeclaredRoutes(this: GatewayRoutesThis, force = false) {
			let changed = force;
			for (const action of registryActions(this.broker.registry)) {
				if (!isClientAction(action)) continue;
				const known = this.declared.get(action.name);
				if (known && JSON.stringify(known) === JSON.stringify(action)) continue;
				this.declared.set(action.name, action);
				changed = true;
			}
			if (!changed) return;
			this.apiDocuments = {};

			// What the registry declares wins over what the documents remember.
			const routed = new Map(this.documented.map(a => [a.name, a]));
			for (const [name, action] of this.declared) routed.set(name, action);
			const aliases = new Map<string, Record<string, string>>();
			for (const action of routed.values()) {
				const routeName = ROUTE_OF_KIND[action.gatewayRoute ?? "rest"];
				const route = this.routes.find(r => r.name === routeName);
				// A declaration this gateway cannot serve (another version's node?) is left out, not fatal.
				if (!route) {
					this.logger.error(`${action.name}: this gateway has no route "${String(action.gatewayRoute)}"; its REST routes are not served`);
					continue;
				}
				const base = route.path === "/" ? "" : route.path;
				for (const { method, path } of restRoutesOf(action)) {
					if (!path.startsWith(`${base}/`)) {
						this.logger.error(`${action.name}: ${path} is not under the path ${route.path} of its route; not served`);
						continue;
					}
					const table = aliases.get(routeName) ?? {};
					table[`${method} ${path.slice(base.length)}`] = action.name;
					aliases.set(routeName, table);
				}
			}
			for (const routeName of new Set(Object.values(ROUTE_OF_KIND))) {
				const route = this.routes.find(r => r.name === routeName);
				// The route's own (function) aliases stay; the declared ones are replaced.
				if (route) this.createRouteAliases(route, { ...route.opts.aliases, ...aliases.get(routeName) });
			}
			this.optimizeAliasesOrder();

			const socketEvents: GatewayRoutesThis["socketEvents"] = { "/chat": new Map(), "/notifications": new Map() };
			for (const action of routed.values()) {
				if (action.socket) socketEvents[action.socket.namespace].set(action.socket.event, { ...action.socket, action: action.name });
			}
			this.socketEvents = socketEvents;
		},

		openApiDocument(this: GatewayRoutesThis): Obj {
			return (this.apiDocuments.openapi ??= buildOpenApi([...this.declared.values()], this.gatewayPaths()));
		},

		asyncApiDocument(this: GatewayRoutesThis): Obj {
			return (this.apiDocuments.asyncapi ??= buildAsyncApi([...this.declared.values()]));
		},
	},

	created(this: GatewayRoutesThis) {
		this.declared = new Map();
		this.documented = documentedRoutes();
		this.socketEvents = { "/chat": new Map(), "/notifications": new Map() };
		this.apiDocuments = {};
	},

	started(this: GatewayRoutesThis) {
		this.refreshDeclaredRoutes(true);
	},
} as unknown as Partial<ServiceSchema>;
