/**
 * Multipart uploads (POST /upload/single and /upload/multiple), parsed by multer 2 with a storage
 * engine that streams each file into files.save, on whatever node runs it, as it arrives: nothing
 * is buffered whole here. All or nothing: when one file fails (too large, a refused type, too
 * many, the client went away), multer waits for the files in flight and hands every file of the
 * request that was stored back to the engine, which has the files service discard it.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import { Transform, type Writable } from "node:stream";
import type { Context, Service, ServiceSchema } from "moleculer";
import multer, { MulterError, type StorageEngine } from "multer";
import { MAX_UPLOAD_FILES } from "../lib/api-schemas";
import { config } from "../lib/config";
import { appError, badRequest, validationError } from "../lib/errors";
import type { CallMeta } from "../lib/meta";
import { type GatewayHttpThis, type GatewayRequest, MiB } from "./gateway-http.mixin";

export interface GatewayUploadsThis extends Service, GatewayHttpThis {
	handleUpload(req: GatewayRequest, res: ServerResponse, field: string, maxFiles: number): void;
}

/** What files.save answers for one stored file. */
type StoredFile = { fileId: string } & Record<string, unknown>;
/** A file as multer holds it once the engine stored it. */
type UploadedFile = Express.Multer.File & { stored?: StoredFile };

/** The storage engine: each file's stream goes to files.save; a file to undo goes to files.discard. */
function filesServiceStorage(): StorageEngine {
	return {
		_handleFile(req, file, cb) {
			const { $ctx: ctx, traceId } = req as unknown as GatewayRequest;
			(ctx as Context<unknown, CallMeta>)
				.call<StoredFile, unknown>("files.save", file.stream, { meta: { user: ctx.meta.user, traceId, filename: file.originalname, mimetype: file.mimetype } })
				.then(stored => cb(null, { stored, size: Number(stored.size ?? 0) } as Partial<UploadedFile>))
				.catch(err => {
					// What files.save did not read is read here, so the rest of the request still flows.
					file.stream.resume();
					cb(err);
				});
		},
		_removeFile(req, file, cb) {
			const { $ctx: ctx } = req as unknown as GatewayRequest;
			const fileId = (file as UploadedFile).stored?.fileId;
			if (!fileId) return cb(null);
			ctx.call("files.discard", { fileIds: [fileId] }, { meta: { user: ctx.meta.user } })
				.then(() => cb(null))
				.catch(err => cb(err as Error));
		},
	};
}

/** multer's and busboy's failures as the contract's errors; the files service's own pass through. */
function uploadError(err: unknown, field: string, maxFiles: number): unknown {
	if (err instanceof MulterError) {
		switch (err.code) {
			case "LIMIT_FILE_SIZE":
				return appError("PAYLOAD_TOO_LARGE", `A file may be at most ${config.fileMaxBytes} bytes`);
			case "LIMIT_FILE_COUNT":
				return validationError(`At most ${maxFiles} file(s)`, [{ field, type: "arrayMax", message: `At most ${maxFiles}` }]);
			case "LIMIT_UNEXPECTED_FILE":
				// The field allowed, once too often; or another field.
				if (err.field === field) return validationError(`At most ${maxFiles} file(s)`, [{ field, type: "arrayMax", message: `At most ${maxFiles}` }]);
				return validationError(`Send the file in the field "${field}"`, [{ field: err.field ?? "upload", type: "field", message: `Expected "${field}"` }]);
			default:
				return badRequest(`Malformed upload: ${err.message}`);
		}
	}
	if ((err as { code?: unknown })?.code !== undefined && typeof (err as { type?: unknown }).type === "string") return err; // a Moleculer error
	return badRequest(`Malformed upload: ${(err as Error)?.message ?? "unreadable"}`);
}

/** The function routes of the "upload" route. */
export const uploadAliases = {
	"POST single"(this: GatewayUploadsThis, req: GatewayRequest, res: ServerResponse) {
		this.handleUpload(req, res, "file", 1);
	},
	"POST multiple"(this: GatewayUploadsThis, req: GatewayRequest, res: ServerResponse) {
		this.handleUpload(req, res, "files", MAX_UPLOAD_FILES);
	},
};

const storage = filesServiceStorage();

export const GatewayUploadsMixin = {
	methods: {
		handleUpload(this: GatewayUploadsThis, req: GatewayRequest, res: ServerResponse, field: string, maxFiles: number) {
			// The whole request may hold maxFiles files at the limit and a little more (headers, fields).
			const maxRequest = config.fileMaxBytes * maxFiles + MiB;
			if (Number(req.headers["content-length"] ?? 0) > maxRequest) {
				req.resume();
				return this.sendError(req, res, appError("PAYLOAD_TOO_LARGE", "The upload is too large"));
			}
			if (!/^multipart\/form-data\b/i.test(req.headers["content-type"] ?? "")) {
				req.resume();
				return this.sendError(req, res, appError("UNSUPPORTED_MEDIA_TYPE", "Send multipart/form-data"));
			}
			const upload = multer({
				storage,
				limits: { fileSize: config.fileMaxBytes, files: maxFiles, fields: 20, fieldSize: 64 * 1024, parts: maxFiles + 20 },
				// Browsers send file names in UTF-8 (busboy would read them as Latin-1).
				defParamCharset: "utf8",
				// A body without a Content-Length (chunked) is counted as it arrives.
				streamHandler(request: IncomingMessage, busboy: Writable) {
					let received = 0;
					const counter = new Transform({
						transform(chunk: Buffer, _enc, done) {
							received += chunk.length;
							if (received > maxRequest) return done(appError("PAYLOAD_TOO_LARGE", "The upload is too large"));
							done(null, chunk);
						},
					});
					counter.on("error", err => {
						request.unpipe(counter);
						busboy.destroy(err);
					});
					request.pipe(counter).pipe(busboy);
				},
			} as multer.Options);
			const parse = maxFiles === 1 ? upload.single(field) : upload.array(field, maxFiles);
			parse(req as never, res as never, (err?: unknown) => {
				if (res.writableEnded) return;
				if (err) return this.sendError(req, res, uploadError(err, field, maxFiles));
				const files = ((maxFiles === 1 ? [(req as unknown as { file?: UploadedFile }).file] : (req as unknown as { files?: UploadedFile[] }).files) ?? []).filter(
					(f): f is UploadedFile => !!f?.stored,
				);
				if (files.length === 0) return this.sendError(req, res, validationError(`No file in the field "${field}"`, [{ field, type: "required", message: "Missing file" }]));
				const stored = files.map(f => f.stored as StoredFile);
				res.statusCode = 201;
				res.setHeader("Content-Type", "application/json; charset=utf-8");
				res.end(JSON.stringify(maxFiles === 1 ? stored[0] : { files: stored }));
			});
		},
	},
} as unknown as Partial<ServiceSchema>;
