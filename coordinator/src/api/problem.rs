//! RFC 9457 problem documents: the one error format of the API.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use drover_shared::api;

/// An error answer: status, a short title, what is wrong, and the field at
/// fault. Handlers return it with `?`.
#[derive(Debug, Clone)]
pub struct Problem {
    status: StatusCode,
    body: api::Problem,
    retry_after_s: Option<u64>,
}

impl Problem {
    /// A problem with `status`.
    pub fn new(status: StatusCode, title: &str, detail: String, field: Option<&str>) -> Problem {
        Problem {
            status,
            body: api::Problem {
                title: title.to_string(),
                status: status.as_u16(),
                detail,
                field: field.map(str::to_string),
            },
            retry_after_s: None,
        }
    }

    /// 400 for `field`.
    pub fn bad_request(title: &str, detail: String, field: &str) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, title, detail, Some(field))
    }

    /// 404 naming what is missing.
    pub fn not_found(title: &str, detail: String, field: &str) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, title, detail, Some(field))
    }

    /// 409: the request conflicts with the state of the thing.
    pub fn conflict(title: &str, detail: String, field: &str) -> Problem {
        Problem::new(StatusCode::CONFLICT, title, detail, Some(field))
    }

    /// 422: well-formed, but not acceptable.
    pub fn unprocessable(title: &str, detail: String, field: &str) -> Problem {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, title, detail, Some(field))
    }

    /// 429 with `Retry-After`.
    pub fn too_many(detail: String, field: &str, retry_after_s: u64) -> Problem {
        let mut p = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests",
            detail,
            Some(field),
        );
        p.retry_after_s = Some(retry_after_s.max(1));
        p
    }

    /// 503: the scheduler did not answer.
    pub fn unavailable(e: impl std::fmt::Display) -> Problem {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "scheduler unavailable",
            e.to_string(),
            None,
        )
    }

    /// 500 with what failed.
    pub fn internal(title: &str, detail: String) -> Problem {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, title, detail, None)
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The document.
    pub fn body(&self) -> &api::Problem {
        &self.body
    }

    /// `Retry-After`, for a 429.
    pub fn retry_after_s(&self) -> Option<u64> {
        self.retry_after_s
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.body.title, self.status, self.body.detail
        )
    }
}

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut r = HttpResponse::build(self.status);
        r.content_type("application/problem+json");
        if let Some(s) = self.retry_after_s {
            r.insert_header((actix_web::http::header::RETRY_AFTER, s.to_string()));
        }
        r.json(&self.body)
    }
}

/// A problem as a response, for places that build responses directly.
pub fn problem(
    status: StatusCode,
    title: &str,
    detail: String,
    field: Option<&str>,
) -> HttpResponse {
    Problem::new(status, title, detail, field).error_response()
}

/// Result of a handler.
pub type ApiResult<T = HttpResponse> = Result<T, Problem>;
