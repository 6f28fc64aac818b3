/**
 * The API documents and their pages: /docs (Swagger UI from the swagger-ui-dist package) and
 * /docs/asyncapi (public/docs/asyncapi-viewer.js), both served from here with no CDN and no
 * inline script; /docs/openapi.json and /docs/asyncapi.json are made from the actions'
 * declarations (GatewayRoutesMixin, lib/api-documents.ts).
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import path from "node:path";
import type { ServiceSchema } from "moleculer";
import serveStatic from "serve-static";
import { FILE_LIMIT_TEXT, FILE_TYPES_TEXT, MAX_UPLOAD_FILES, type Obj, headers, multipartBody, multipartUploadErrors, ok, operation, schema } from "../lib/api-schemas";
import type { GatewayRoutesThis } from "./gateway-routes.mixin";

/** The documentation page: Swagger UI from the swagger-ui-dist package, served locally (no CDN), no inline script. */
const DOCS_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Parley API</title>
<link rel="icon" href="/favicon.svg">
<link rel="stylesheet" href="/docs/ui/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/ui/swagger-ui-bundle.js"></script>
<script src="/docs/init.js"></script>
</body></html>`;
/** The socket events' page: public/docs/asyncapi-viewer.js renders /docs/asyncapi.json (no CDN, no inline script). */
const ASYNCAPI_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Parley real-time API</title>
<link rel="icon" href="/favicon.svg">
<link rel="stylesheet" href="/docs/asyncapi-viewer.css"></head>
<body><main id="asyncapi"><p>Loading /docs/asyncapi.json…</p></main>
<script type="module" src="/docs/asyncapi-viewer.js"></script>
</body></html>`;
const DOCS_INIT_JS = `window.ui = SwaggerUIBundle({ url: "/docs/openapi.json", dom_id: "#swagger-ui" });\n`;

function page(type: string, body: string) {
	return (_req: IncomingMessage, res: ServerResponse) => {
		res.setHeader("Content-Type", `${type}; charset=utf-8`);
		res.end(body);
	};
}

/** The docs pages: function routes of the "public" route. */
export const docsAliases = {
	"GET docs": page("text/html", DOCS_HTML),
	"GET docs/init.js": page("text/javascript", DOCS_INIT_JS),
	"GET docs/asyncapi": page("text/html", ASYNCAPI_HTML),
};

/** Swagger UI's files: the package directory, without loading the package (its main module is the whole 1.5 MB UI bundle). */
export const swaggerUiFiles = serveStatic(path.dirname(require.resolve("swagger-ui-dist/package.json")), { index: false, fallthrough: false });

/** The gateway's own function routes, which no action declares: their operations, for the OpenAPI document. */
function gatewayPaths(): Record<string, Obj> {
	const page = (operationId: string, summary: string, description: string, type: string): Obj => ({
		get: operation({ operationId, tag: "Docs", summary, responses: { 200: { description, headers: headers(), content: { [type]: { schema: { type: "string" } } } } } }),
	});
	return {
		"/docs": page("getDocsPage", "Interactive API documentation (Swagger UI)", "An HTML page rendering /docs/openapi.json.", "text/html"),
		"/docs/init.js": page(
			"getDocsPageScript",
			"The script that starts Swagger UI on the /docs page (no inline script, for the Content-Security-Policy)",
			"JavaScript.",
			"text/javascript",
		),
		"/docs/asyncapi": page("getAsyncApiPage", "The socket events, rendered from /docs/asyncapi.json", "An HTML page.", "text/html"),
		"/upload/single": {
			post: operation({
				operationId: "uploadFile",
				tag: "Files",
				summary: "Upload one file (multipart)",
				description:
					"`multipart/form-data` with the file in the field `file`. The file is streamed to storage as it arrives and may be at most " +
					`${FILE_LIMIT_TEXT}. ${FILE_TYPES_TEXT} ` +
					"All or nothing: an upload that is refused, fails or is interrupted keeps nothing.",
				bearer: true,
				requestBody: multipartBody("file", 1),
				responses: { 201: ok("Stored.", schema("File")), ...multipartUploadErrors("file", 1) },
			}),
		},
		"/upload/multiple": {
			post: operation({
				operationId: "uploadFiles",
				tag: "Files",
				summary: `Upload up to ${MAX_UPLOAD_FILES} files (multipart)`,
				description:
					`\`multipart/form-data\` with 1 to ${MAX_UPLOAD_FILES} files, each in a field \`files\`. Every file is checked as in POST /upload/single ` +
					`(at most ${FILE_LIMIT_TEXT}; its type decided from its content). ` +
					"All or nothing: if any file is refused, or the upload fails or is interrupted, none of the request's files is kept.",
				bearer: true,
				requestBody: multipartBody("files", MAX_UPLOAD_FILES),
				responses: { 201: ok("All the files are stored.", schema("FileList")), ...multipartUploadErrors("files", MAX_UPLOAD_FILES) },
			}),
		},
	};
}

export const GatewayDocsMixin = {
	actions: {
		openapi: {
			rest: "GET /docs/openapi.json",
			gatewayRoute: "public",
			auth: false,
			openapi: {
				operationId: "getOpenApiDocument",
				tag: "Docs",
				summary: "This OpenAPI document",
				description: "Made from the declarations of the actions this cluster runs.",
				responses: { 200: ok("The OpenAPI 3.0.3 document.", { type: "object", additionalProperties: true }) },
			},
			handler(this: GatewayRoutesThis) {
				return this.openApiDocument();
			},
		},
		asyncapi: {
			rest: "GET /docs/asyncapi.json",
			gatewayRoute: "public",
			auth: false,
			openapi: {
				operationId: "getAsyncApiDocument",
				tag: "Docs",
				summary: "The AsyncAPI 3.0 document of the Socket.IO namespaces /chat and /notifications",
				description: "Every event in both directions, with payload and ack schemas; rendered at /docs/asyncapi.",
				responses: { 200: ok("The AsyncAPI 3.0.0 document.", { type: "object", additionalProperties: true }) },
			},
			handler(this: GatewayRoutesThis) {
				return this.asyncApiDocument();
			},
		},
	},
	methods: { gatewayPaths },
} as unknown as Partial<ServiceSchema>;
