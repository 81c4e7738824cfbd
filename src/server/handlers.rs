//! The endpoints, each a thin translation between HTTP and the store's API.

use std::collections::HashMap;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use layerstore::manifest::MAX_MANIFEST_SIZE;
use layerstore::upload::{ChunkStream, UploadStatus};
use layerstore::{ByteRange, Digest, Paginated, Reference, Repository, Store};

use super::AppState;
use super::access;
use super::error::{ApiError, ClientBodyError, upload_range};
use super::routes::{self, Route};

type ApiResult = Result<Response, ApiError>;

const DIGEST_HEADER: &str = "docker-content-digest";
const UPLOAD_UUID_HEADER: &str = "docker-upload-uuid";

/// A request's method, query and headers: shareable across awaits (the body is not).
pub struct Meta {
    pub method: Method,
    pub query: HashMap<String, String>,
    pub headers: HeaderMap,
}

/// Everything of a request a handler may need.
pub struct Request {
    pub meta: Meta,
    pub body: Body,
}

pub async fn dispatch(state: &AppState, route: Route<'_>, req: Request) -> ApiResult {
    let store = &state.store;
    let method = req.meta.method.clone();
    // RFC 9110: a 405 names the methods the endpoint does take.
    let allow = access::allowed_methods(route.endpoint(), state.delete_enabled, state.read_only);
    let not_allowed =
        |message: &str| ApiError::unsupported(message).with_header(header::ALLOW, allow.clone());
    // Only what the access table lists reaches a handler: a method served below without a
    // row there would otherwise need no more than authentication.
    if access::rule(route.endpoint(), &method).is_none() {
        return Err(not_allowed("method not allowed on this endpoint"));
    }
    match (route, method) {
        (Route::Base, Method::GET | Method::HEAD) => Ok(Json::empty_object()),
        (Route::Catalog, Method::GET) => catalog(store, &req.meta).await,
        (Route::Tags { name }, Method::GET) => tags(&repo(store, name)?, name, &req.meta).await,
        (Route::Manifest { name, reference }, m) => {
            let r = repo(store, name)?;
            match m {
                Method::GET | Method::HEAD => {
                    let reference = Reference::parse(reference).map_err(|e| {
                        // What the conformance suite expects of a pull: no manifest is known
                        // under a reference that cannot name one. A push or delete of one
                        // stays a 400 (its own conformance test).
                        ApiError::new(
                            StatusCode::NOT_FOUND,
                            "MANIFEST_UNKNOWN",
                            format!("manifest unknown: {e}"),
                        )
                    })?;
                    get_manifest(&r, &reference, &req.meta).await
                }
                Method::PUT => put_manifest(&r, name, &routes::reference(reference)?, req).await,
                Method::DELETE => {
                    deletes_enabled(state, &allow)?;
                    delete_manifest(&r, &routes::reference(reference)?).await
                }
                _ => Err(not_allowed("method not allowed on manifests")),
            }
        }
        (Route::Blob { name, digest }, m) => {
            let r = repo(store, name)?;
            let digest = routes::digest(digest)?;
            match m {
                Method::GET | Method::HEAD => get_blob(&r, &digest, &req.meta).await,
                Method::DELETE => {
                    deletes_enabled(state, &allow)?;
                    r.unlink_blob(&digest).await?;
                    Ok(accepted())
                }
                _ => Err(not_allowed("method not allowed on blobs")),
            }
        }
        (Route::Uploads { name }, Method::POST) => {
            start_upload(&repo(store, name)?, name, req).await
        }
        (Route::Upload { name, id }, m) => {
            let r = repo(store, name)?;
            let id = routes::upload_id(id)?;
            match m {
                Method::GET => {
                    let status = r.upload_status(&id).await?;
                    Ok(upload_progress(StatusCode::NO_CONTENT, name, &status))
                }
                Method::PATCH => patch_upload(&r, name, &id, req).await,
                Method::PUT => put_upload(&r, name, &id, req).await,
                Method::DELETE => {
                    r.cancel_upload(&id).await?;
                    Ok(StatusCode::NO_CONTENT.into_response())
                }
                _ => Err(not_allowed("method not allowed on uploads")),
            }
        }
        (Route::Referrers { name, digest }, Method::GET) => {
            let r = repo(store, name)?;
            referrers(&r, &routes::digest(digest)?, &req.meta).await
        }
        _ => Err(not_allowed("method not allowed on this endpoint")),
    }
}

fn repo(store: &Store, name: &str) -> Result<Repository, ApiError> {
    Ok(store.repository(routes::name(name)?))
}

fn deletes_enabled(state: &AppState, allow: &str) -> Result<(), ApiError> {
    if state.delete_enabled {
        Ok(())
    } else {
        Err(ApiError::unsupported(
            "deletes are disabled in this registry's configuration (storage.delete.enabled)",
        )
        .with_header(header::ALLOW, allow.to_owned()))
    }
}

fn accepted() -> Response {
    with_headers(
        StatusCode::ACCEPTED,
        [(header::CONTENT_LENGTH, "0".to_owned())],
    )
}

fn with_headers<const N: usize>(
    status: StatusCode,
    headers: [(header::HeaderName, String); N],
) -> Response {
    let mut response = status.into_response();
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

struct Json;

impl Json {
    fn empty_object() -> Response {
        let mut r = (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response();
        r.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        r
    }
}

// ---------------------------------------------------------------------------------------------
// Listings

fn page_params(req: &Meta) -> Result<(Option<usize>, Option<&str>), ApiError> {
    let n = match req.query.get("n") {
        Some(n) => Some(n.parse::<usize>().map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "PAGINATION_NUMBER_INVALID",
                format!("n={n:?} is not a count"),
            )
        })?),
        None => None,
    };
    Ok((n, req.query.get("last").map(String::as_str)))
}

/// The `Link` header to the next page, per the spec, when the page was cut short.
fn link_next<T: AsRef<str>>(path: &str, page: &Paginated<T>, n: Option<usize>) -> Option<String> {
    let (last, n) = (page.items.last()?, n?);
    page.truncated
        .then(|| format!("<{path}?n={n}&last={}>; rel=\"next\"", last.as_ref()))
}

fn json_page(body: serde_json::Value, link: Option<String>) -> Response {
    let mut response = axum::Json(body).into_response();
    if let Some(link) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(header::LINK, link);
    }
    response
}

async fn catalog(store: &Store, req: &Meta) -> ApiResult {
    let (n, last) = page_params(req)?;
    let page = store.catalog(n, last).await?;
    let link = link_next("/v2/_catalog", &page, n);
    let names: Vec<&str> = page.items.iter().map(AsRef::as_ref).collect();
    Ok(json_page(
        serde_json::json!({ "repositories": names }),
        link,
    ))
}

async fn tags(r: &Repository, name: &str, req: &Meta) -> ApiResult {
    let (n, last) = page_params(req)?;
    let page = r.tags(n, last).await?;
    let link = link_next(&format!("/v2/{name}/tags/list"), &page, n);
    let tags: Vec<&str> = page.items.iter().map(AsRef::as_ref).collect();
    Ok(json_page(
        serde_json::json!({ "name": name, "tags": tags }),
        link,
    ))
}

async fn referrers(r: &Repository, subject: &Digest, req: &Meta) -> ApiResult {
    let artifact_type = req.query.get("artifactType").map(String::as_str);
    let referrers = r.referrers(subject, artifact_type).await?;
    let mut response = (
        [(
            header::CONTENT_TYPE,
            layerstore::manifest::media_type::OCI_INDEX,
        )],
        referrers.to_index_json(),
    )
        .into_response();
    if referrers.filtered {
        response.headers_mut().insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// Manifests

/// Whether the client's `Accept` allows this media type. No `Accept`, or a wildcard, allows
/// everything.
fn acceptable(headers: &HeaderMap, media_type: &str) -> bool {
    let mut any = false;
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let item = item.split(';').next().unwrap_or("").trim();
            if item.is_empty() {
                continue;
            }
            any = true;
            if item == media_type || item == "*/*" || item == "application/*" {
                return true;
            }
        }
    }
    !any
}

async fn get_manifest(r: &Repository, reference: &Reference, req: &Meta) -> ApiResult {
    let head = req.method == Method::HEAD;
    let (info, body) = if head {
        (r.stat_manifest(reference).await?, None)
    } else {
        let m = r.get_manifest(reference).await?;
        (m.info, Some(m.bytes))
    };
    if !acceptable(&req.headers, &info.media_type) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
            format!(
                "manifest {reference} is {}, which the request's Accept does not allow",
                info.media_type
            ),
        ));
    }
    let mut response = with_headers(
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, info.media_type.clone()),
            (header::CONTENT_LENGTH, info.size.to_string()),
            (
                header::HeaderName::from_static(DIGEST_HEADER),
                info.digest.to_string(),
            ),
            (header::ETAG, format!("\"{}\"", info.digest)),
        ],
    );
    if let Some(body) = body {
        *response.body_mut() = Body::from(body);
    }
    Ok(response)
}

async fn put_manifest(
    r: &Repository,
    name: &str,
    reference: &Reference,
    req: Request,
) -> ApiResult {
    let content_type = req
        .meta
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // The spec: a registry enforcing a manifest size limit SHOULD answer 413 over it.
    let bytes = axum::body::to_bytes(req.body, MAX_MANIFEST_SIZE)
        .await
        .map_err(|e| {
            if e.to_string().contains("length limit") {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "MANIFEST_INVALID",
                    format!("manifest is over the limit of {MAX_MANIFEST_SIZE} bytes (4 MiB)"),
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "MANIFEST_INVALID",
                    ClientBodyError(e).to_string(),
                )
            }
        })?;
    let put = r
        .put_manifest(reference, bytes, content_type.as_deref())
        .await?;
    let mut headers = vec![
        (
            header::LOCATION,
            format!("/v2/{name}/manifests/{}", put.digest),
        ),
        (
            header::HeaderName::from_static(DIGEST_HEADER),
            put.digest.to_string(),
        ),
        (header::CONTENT_LENGTH, "0".to_owned()),
    ];
    if let Some(subject) = put.subject {
        headers.push((
            header::HeaderName::from_static("oci-subject"),
            subject.to_string(),
        ));
    }
    let mut response = StatusCode::CREATED.into_response();
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(&v) {
            response.headers_mut().insert(k, v);
        }
    }
    Ok(response)
}

async fn delete_manifest(r: &Repository, reference: &Reference) -> ApiResult {
    match reference {
        Reference::Digest(d) => r.delete_manifest(d).await?,
        Reference::Tag(t) => r.delete_tag(t).await?,
    }
    Ok(accepted())
}

// ---------------------------------------------------------------------------------------------
// Blobs

/// A single `bytes=` range; `None` for anything else, which HTTP lets a server ignore.
fn parse_range(headers: &HeaderMap) -> Option<ByteRange> {
    let value = headers.get(header::RANGE)?.to_str().ok()?.trim();
    let spec = value.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = (start.trim(), end.trim());
    match (start.is_empty(), end.is_empty()) {
        (false, true) => Some(ByteRange::From(start.parse().ok()?)),
        (false, false) => Some(ByteRange::Bounded {
            start: start.parse().ok()?,
            end_inclusive: end.parse().ok()?,
        }),
        (true, false) => Some(ByteRange::Suffix(end.parse().ok()?)),
        (true, true) => None,
    }
}

async fn get_blob(r: &Repository, digest: &Digest, req: &Meta) -> ApiResult {
    let common = |size: u64| {
        [
            (
                header::CONTENT_TYPE,
                layerstore::store::BLOB_MEDIA_TYPE.to_owned(),
            ),
            (
                header::HeaderName::from_static(DIGEST_HEADER),
                digest.to_string(),
            ),
            (header::ACCEPT_RANGES, "bytes".to_owned()),
            (header::ETAG, format!("\"{digest}\"")),
            (header::CONTENT_LENGTH, size.to_string()),
        ]
    };
    if req.method == Method::HEAD {
        let info = r.stat_blob(digest).await?;
        return Ok(with_headers(StatusCode::OK, common(info.size)));
    }
    let range = parse_range(&req.headers);
    let read = r.read_blob(digest, range).await?;
    let served = read.range.end - read.range.start;
    let partial = range.is_some();
    let mut response = with_headers(
        if partial {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        },
        common(served),
    );
    if partial {
        let value = format!(
            "bytes {}-{}/{}",
            read.range.start,
            read.range.end - 1,
            read.info.size
        );
        if let Ok(v) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    *response.body_mut() = Body::from_stream(read.stream.map_err(std::io::Error::other));
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// Uploads

/// The request body as the store takes it. A body that breaks while it is received (malformed
/// chunked framing, fewer bytes than its `Content-Length`, a connection closed midway) is the
/// client's fault: its error is marked so that it is answered with a 400, not as a failure of
/// the store (see [`ClientBodyError`]).
fn body_stream(body: Body) -> ChunkStream<'static> {
    body.into_data_stream()
        .map_err(|e| std::io::Error::other(ClientBodyError(e)))
        .boxed()
}

fn upload_progress(status_code: StatusCode, name: &str, status: &UploadStatus) -> Response {
    with_headers(
        status_code,
        [
            (
                header::LOCATION,
                format!("/v2/{name}/blobs/uploads/{}", status.id),
            ),
            (header::RANGE, upload_range(status.offset)),
            (
                header::HeaderName::from_static(UPLOAD_UUID_HEADER),
                status.id.to_string(),
            ),
            (header::CONTENT_LENGTH, "0".to_owned()),
        ],
    )
}

fn blob_created(name: &str, digest: &Digest) -> Response {
    with_headers(
        StatusCode::CREATED,
        [
            (header::LOCATION, format!("/v2/{name}/blobs/{digest}")),
            (
                header::HeaderName::from_static(DIGEST_HEADER),
                digest.to_string(),
            ),
            (header::CONTENT_LENGTH, "0".to_owned()),
        ],
    )
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

async fn start_upload(r: &Repository, name: &str, req: Request) -> ApiResult {
    if let (Some(mount), Some(from)) = (req.meta.query.get("mount"), req.meta.query.get("from")) {
        let digest = routes::digest(mount)?;
        // A bad `from` name is the client's error, but the spec lets us fall back to an
        // ordinary upload rather than fail the push.
        if let Ok(from) = layerstore::RepositoryName::parse(from)
            && r.mount_blob(&from, &digest).await?
        {
            return Ok(blob_created(name, &digest));
        }
    }
    if let Some(digest) = req.meta.query.get("digest") {
        let digest = routes::digest(digest)?;
        let size = content_length(&req.meta.headers);
        r.put_blob_stream(&digest, size, body_stream(req.body))
            .await?;
        return Ok(blob_created(name, &digest));
    }
    let status = r.start_upload().await?;
    Ok(upload_progress(StatusCode::ACCEPTED, name, &status))
}

/// The start offset a `Content-Range` names, `None` without the header. Only a malformed
/// one costs a look at the session (its error names the current offset).
async fn content_range(
    r: &Repository,
    id: &layerstore::UploadId,
    headers: &HeaderMap,
) -> Result<Option<u64>, ApiError> {
    if let Ok(start) = content_range_start(headers, 0) {
        return Ok(start);
    }
    let current = r.upload_status(id).await?;
    content_range_start(headers, current.offset)
}

/// The start offset a `Content-Range` names; `Ok(None)` without the header.
fn content_range_start(headers: &HeaderMap, offset: u64) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get(header::CONTENT_RANGE) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UPLOAD_INVALID",
            "malformed Content-Range; expected <start>-<end>",
        )
        .with_header(header::RANGE, upload_range(offset))
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    let text = text.strip_prefix("bytes ").unwrap_or(text);
    let text = text.split('/').next().unwrap_or(text);
    let (start, end) = text.split_once('-').ok_or_else(bad)?;
    let (start, end): (u64, u64) = (
        start.trim().parse().map_err(|_| bad())?,
        end.trim().parse().map_err(|_| bad())?,
    );
    if end < start {
        return Err(bad());
    }
    // `0-18446744073709551615` names one byte more than a u64 counts.
    if let Some(length) = content_length(headers)
        && Some(length) != (end - start).checked_add(1)
    {
        return Err(bad());
    }
    Ok(Some(start))
}

async fn patch_upload(
    r: &Repository,
    name: &str,
    id: &layerstore::UploadId,
    req: Request,
) -> ApiResult {
    let start = content_range(r, id, &req.meta.headers).await?;
    let status = r
        .append_upload_from(id, start, body_stream(req.body))
        .await?;
    Ok(upload_progress(StatusCode::ACCEPTED, name, &status))
}

async fn put_upload(
    r: &Repository,
    name: &str,
    id: &layerstore::UploadId,
    req: Request,
) -> ApiResult {
    let digest = req.meta.query.get("digest").ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            "PUT needs ?digest=",
        )
    })?;
    let digest = routes::digest(digest)?;
    let has_body = content_length(&req.meta.headers).is_some_and(|n| n > 0)
        || req.meta.headers.contains_key(header::TRANSFER_ENCODING);
    if has_body {
        let start = content_range(r, id, &req.meta.headers).await?;
        r.finish_upload(id, start, body_stream(req.body), &digest, None)
            .await?;
    } else {
        r.commit_upload(id, &digest, None).await?;
    }
    Ok(blob_created(name, &digest))
}
