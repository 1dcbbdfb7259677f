//! The dashboard's templates (`templates/dashboard/`): each view as a whole page and as the
//! fragment its live region is replaced with. Askama escapes every value for HTML (the SVG
//! included in the topology too), so names, identities, paths and headers that peers and
//! platform objects control are shown as text, never as markup.

use askama::Template;

use super::topology::Topology;
use super::views::{Certificates, Overview, ServiceDetail, TapRow};

/// What every page shares: its title and the view the navigation marks as current.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    /// The page's title.
    pub(crate) title: String,
    /// `overview`, `topology`, `tap`, `certificates`, or empty.
    pub(crate) active: &'static str,
}

/// The mesh at a glance.
#[derive(Debug, Template)]
#[template(path = "dashboard/overview.html")]
pub(crate) struct OverviewPage<'a> {
    /// The page.
    pub(crate) frame: Frame,
    /// What it shows.
    pub(crate) view: &'a Overview,
    /// Where its updates come from.
    pub(crate) events: String,
}

/// The overview's live region.
#[derive(Debug, Template)]
#[template(path = "dashboard/overview_live.html")]
pub(crate) struct OverviewLive<'a> {
    /// What it shows.
    pub(crate) view: &'a Overview,
}

/// One service.
#[derive(Debug, Template)]
#[template(path = "dashboard/service.html")]
pub(crate) struct ServicePage<'a> {
    /// The page.
    pub(crate) frame: Frame,
    /// What it shows.
    pub(crate) view: &'a ServiceDetail,
    /// Where its updates come from.
    pub(crate) events: String,
}

/// A service's live region.
#[derive(Debug, Template)]
#[template(path = "dashboard/service_live.html")]
pub(crate) struct ServiceLive<'a> {
    /// What it shows.
    pub(crate) view: &'a ServiceDetail,
}

/// A page for what is not there.
#[derive(Debug, Template)]
#[template(path = "dashboard/missing.html")]
pub(crate) struct MissingPage {
    /// The page.
    pub(crate) frame: Frame,
    /// What is missing, in words.
    pub(crate) message: String,
}

/// The topology graph.
#[derive(Debug, Template)]
#[template(path = "dashboard/topology.html")]
pub(crate) struct TopologyPage<'a> {
    /// The page.
    pub(crate) frame: Frame,
    /// What it shows.
    pub(crate) view: &'a Topology,
    /// Where its updates come from.
    pub(crate) events: String,
}

/// The topology's live region.
#[derive(Debug, Template)]
#[template(path = "dashboard/topology_live.html")]
pub(crate) struct TopologyLive<'a> {
    /// What it shows.
    pub(crate) view: &'a Topology,
}

/// The certificates.
#[derive(Debug, Template)]
#[template(path = "dashboard/certificates.html")]
pub(crate) struct CertificatesPage<'a> {
    /// The page.
    pub(crate) frame: Frame,
    /// What it shows.
    pub(crate) view: &'a Certificates,
    /// Where its updates come from.
    pub(crate) events: String,
}

/// The certificates' live region.
#[derive(Debug, Template)]
#[template(path = "dashboard/certificates_live.html")]
pub(crate) struct CertificatesLive<'a> {
    /// What it shows.
    pub(crate) view: &'a Certificates,
}

/// The tap's filters, as the form shows them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TapFilters {
    /// A service or workload.
    pub(crate) to: String,
    /// A client identity.
    pub(crate) from: String,
    /// A method.
    pub(crate) method: String,
    /// A path prefix.
    pub(crate) path: String,
}

/// The live tap.
#[derive(Debug, Template)]
#[template(path = "dashboard/tap.html")]
pub(crate) struct TapPage {
    /// The page.
    pub(crate) frame: Frame,
    /// The filters.
    pub(crate) filters: TapFilters,
    /// Where the events come from.
    pub(crate) events: String,
    /// Rows the page keeps at most.
    pub(crate) max_rows: usize,
}

/// One row of the tap.
#[derive(Debug, Template)]
#[template(path = "dashboard/tap_row.html")]
pub(crate) struct TapRowFragment<'a> {
    /// The request.
    pub(crate) row: &'a TapRow,
}
